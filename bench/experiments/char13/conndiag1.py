"""conndiag for a stage-1 connector: MODEL = backbones of the checkout + STAGE1_DIR's connector. Usage: conndiag1.py STAGE1_DIR"""
import sys, runpy
from minillava.model import MiniLlava
from minillava.hd import HDConfig
from minillava.backbones import toy_backbones
from minillava.trainer import load_connector
v, l = toy_backbones(progress=False)
m = MiniLlava.from_backbones(str(v), str(l), hd=HDConfig(max_cells=4, global_context=False))
load_connector(m, sys.argv[1])
import tempfile; d = tempfile.mkdtemp(); m.save_pretrained(d)
for s in sys.argv[2:] or ["conndiag"]:
    sys.argv = [s, d]; runpy.run_path(f"bench/experiments/char13/{s}.py", run_name="__main__")
