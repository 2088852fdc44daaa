/* sherld's option table: defaults, bounds, file and flag parsing, cross-option rules, and that
 * the example config documents every option at its default. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"

static char *print_config(const sherld_config *c)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    config_print(f, c);
    fclose(f);
    return buf;
}

Test(config, defaults_are_valid_and_as_documented)
{
    sherld_config c;
    sherl_status st = config_defaults(&c);
    cr_assert(st.code == SHERL_OK, "a default of the table is invalid: %s", st.msg);
    st = config_validate(&c);
    cr_assert(st.code == SHERL_OK, "%s", st.msg);
    cr_expect_str_eq(c.listen, "127.0.0.1:7070");
    cr_expect_eq(c.max_concurrent_jobs, 1);
    cr_expect_eq(c.max_message_bytes, 16 << 20);
    cr_expect_eq(c.max_upload_bytes, 4LL << 30);
    cr_expect_eq(c.log_level, LOG_INFO);
    cr_expect_eq(c.n_data_roots, 0);
    cr_expect_eq(c.gpu_memory_reserve, 2LL << 30);
}

Test(config, example_file_lists_every_option_at_its_default)
{
    sherld_config file, def;
    config_defaults(&def);
    config_defaults(&file);
    /* move every option off its default, so only what the example sets comes back */
    static const char *const other[][2] = {
        {"listen", "127.0.0.1:1"}, {"state-dir", "/x"}, {"data-roots", "/y"},
        {"max-concurrent-jobs", "7"}, {"max-queued-jobs", "7"}, {"memory-budget", "7"},
        {"gpu-memory-reserve", "7"},
        {"threads", "7"}, {"log-level", "debug"}, {"log-file", "/z"}, {"tokens-file", "/z"},
        {"max-upload-bytes", "7"}, {"max-message-bytes", "8192"}, {"drain-timeout", "7"},
        {"tls-cert", "/z"}, {"tls-key", "/z"}};
    for (size_t i = 0; i < sizeof other / sizeof other[0]; i++)
        cr_assert(config_set(&file, other[i][0], other[i][1], NULL).code == SHERL_OK);
    cr_assert_eq((int)(sizeof other / sizeof other[0]), config_option_count(),
                 "a new option: add it here and to deploy/sherld.conf.example");
    sherl_status st = config_load_file(&file, SHERL_EXAMPLE_CONFIG);
    cr_assert(st.code == SHERL_OK, "%s", st.msg);
    char *a = print_config(&file), *b = print_config(&def);
    cr_expect_str_eq(a, b, "the example config differs from the defaults:\n%s\nvs\n%s", a, b);
    free(a), free(b);
    /* and names every option on a line of its own */
    FILE *f = fopen(SHERL_EXAMPLE_CONFIG, "r");
    cr_assert(f);
    char text[16384];
    size_t n = fread(text, 1, sizeof text - 1, f);
    text[n] = 0;
    fclose(f);
    for (int i = 0; i < config_option_count(); i++) {
        char needle[96];
        snprintf(needle, sizeof needle, "\n%s", config_option_name(i));
        cr_expect(strstr(text, needle), "the example config lacks option %s",
                  config_option_name(i));
    }
}

Test(config, values_are_checked_with_the_offending_value_in_the_message)
{
    sherld_config c;
    config_defaults(&c);
    struct {
        const char *name, *value, *expect;
    } bad[] = {
        {"max-concurrent-jobs", "0", "out of range 1..1024"},
        {"max-concurrent-jobs", "2x", "'2x' is not an integer"},
        {"threads", "-1", "out of range"},
        {"memory-budget", "12Q", "'12Q' is not a size"},
        {"gpu-memory-reserve", "-1G", "'-1G' is not a size"},
        {"gpu-memory-reserve", "2X", "'2X' is not a size"},
        {"max-message-bytes", "1K", "out of range"},
        {"log-level", "loud", "'loud', expected error, warn, info or debug"},
        {"data-roots", "relative/dir", "must be an absolute path"},
        {"no-such-option", "1", "unknown option 'no-such-option'"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        sherl_status st = config_set(&c, bad[i].name, bad[i].value, "test");
        cr_expect(st.code == SHERL_EINVAL, "%s %s accepted", bad[i].name, bad[i].value);
        cr_expect(strstr(st.msg, bad[i].expect), "%s %s: message '%s' lacks '%s'", bad[i].name,
                  bad[i].value, st.msg, bad[i].expect);
        cr_expect(strstr(st.msg, "test: "), "message '%s' does not say where", st.msg);
    }
}

Test(config, sizes_paths_and_levels_parse)
{
    sherld_config c;
    config_defaults(&c);
    cr_assert(config_set(&c, "memory-budget", "1.5G", NULL).code == SHERL_OK);
    cr_expect_eq(c.memory_budget, 3LL << 29);
    cr_assert(config_set(&c, "memory-budget", "512MiB", NULL).code == SHERL_OK);
    cr_expect_eq(c.memory_budget, 512LL << 20);
    cr_assert(config_set(&c, "gpu-memory-reserve", "1.5G", NULL).code == SHERL_OK);
    cr_expect_eq(c.gpu_memory_reserve, 3LL << 29);
    cr_assert(config_set(&c, "gpu-memory-reserve", "512M", NULL).code == SHERL_OK);
    cr_expect_eq(c.gpu_memory_reserve, 512LL << 20);
    cr_assert(config_set(&c, "gpu-memory-reserve", "0", NULL).code == SHERL_OK);
    cr_expect_eq(c.gpu_memory_reserve, 0);
    cr_assert(config_set(&c, "gpu-memory-reserve", "1T", NULL).code == SHERL_OK);
    cr_expect_eq(c.gpu_memory_reserve, 1LL << 40);
    cr_assert(config_set(&c, "data-roots", "/data:/models::/srv/x", NULL).code == SHERL_OK);
    cr_expect_eq(c.n_data_roots, 3);
    cr_expect_str_eq(c.data_roots[2], "/srv/x");
    cr_assert(config_set(&c, "log-level", "debug", NULL).code == SHERL_OK);
    cr_expect_eq(c.log_level, LOG_DEBUG);
}

Test(config, file_errors_name_the_line)
{
    char path[] = "/tmp/sherld-conf-XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    const char text[] = "# comment\n\nlisten 127.0.0.1:0   # trailing comment\nthreads many\n";
    cr_assert(write(fd, text, sizeof text - 1) == (ssize_t)(sizeof text - 1));
    close(fd);
    sherld_config c;
    config_defaults(&c);
    sherl_status st = config_load_file(&c, path);
    unlink(path);
    cr_expect(st.code == SHERL_EINVAL);
    cr_expect(strstr(st.msg, ":4: threads: 'many' is not an integer"), "%s", st.msg);
    cr_expect_str_eq(c.listen, "127.0.0.1:0");
}

Test(config, non_loopback_needs_tls_and_tokens)
{
    sherld_config c;
    config_defaults(&c);
    cr_assert(config_set(&c, "listen", "0.0.0.0:7070", NULL).code == SHERL_OK);
    sherl_status st = config_validate(&c);
    cr_expect(st.code == SHERL_EINVAL && strstr(st.msg, "not loopback"), "%s", st.msg);
    config_set(&c, "tls-cert", "/etc/sherld/cert.pem", NULL);
    st = config_validate(&c);
    cr_expect(strstr(st.msg, "give both or neither"), "%s", st.msg);
    config_set(&c, "tls-key", "/etc/sherld/key.pem", NULL);
    config_set(&c, "tokens-file", "/etc/sherld/tokens", NULL);
    st = config_validate(&c);
    cr_expect(st.code == SHERL_OK, "%s", st.msg);
    config_defaults(&c);
    config_set(&c, "listen", "unix:/run/sherld.sock", NULL);
    cr_expect(config_validate(&c).code == SHERL_OK);
    config_set(&c, "state-dir", "relative", NULL);
    cr_expect(config_validate(&c).code == SHERL_EINVAL);
}
