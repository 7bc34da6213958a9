cd .
export PYTHONPATH=. MINILLAVA_CACHE=/tmp/exp15/cache MINILLAVA_CLOSEUP_SHARE=0.15 MINILLAVA_CHAR_TEXT=1 MINILLAVA_CLOSEUP_S1=1 BACKBONES=/tmp/exp14/bb THREADS=2
S1=600 SEEDS=${SEEDS:-0,1} /work/main/.venv/bin/python bench/experiments/hd14/shared_s1_exp.py /tmp/exp15/out${TAG} B
