# Shared by the bench/ scripts (source it). Numbers only: nothing here fails on a timing.

# machine_line: one line saying what ran the benchmark, and when
machine_line() {
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB, $(date -u +%F)"
}

# value_before UNIT: the number before the word UNIT in the input line
value_before() { awk -v u="$1" '{for(i=1;i<=NF;i++) {t=$i; sub(/,$/, "", t); if(t==u) print $(i-1)}}'; }

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# compare_rounds ROUNDS UNIT LOG "OURS_CMD" "TORCH_CMD": alternating rounds so machine noise
# hits both alike; ours' stderr goes to LOG. Sets OURS_MEDIAN and TORCH_MEDIAN (in UNIT).
compare_rounds() {
  local rounds=$1 unit=$2 log=$3 ours=$4 torch=$5 s_all=() t_all=() s t r
  for r in $(seq 1 "$rounds"); do
    s=$(eval "$ours" 2>"$log")
    echo "  round $r: $s"
    s_all+=("$(echo "$s" | head -1 | value_before "$unit")")
    t=$(eval "$torch" 2>/dev/null)
    echo "  round $r: $t"
    t_all+=("$(echo "$t" | value_before "$unit")")
  done
  OURS_MEDIAN=$(median "${s_all[@]}")
  TORCH_MEDIAN=$(median "${t_all[@]}")
}
