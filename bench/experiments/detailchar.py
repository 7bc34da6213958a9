import json,re,collections,sys
from pathlib import Path
world=Path(sys.argv[2])
gold={a["question_id"]:a["answer"] for a in map(json.loads,open(world/"eval/detail_answers.jsonl"))}
c=collections.Counter()
for a in map(json.loads,open(Path(sys.argv[1])/"eval/detail_answers.jsonl")):
    g=re.search(r"character (\S+) is",gold[a["question_id"]]); p=re.search(r"character (\S+) is",a["text"])
    c[("gold char" if g else "gold none", "said char" if p else "said none", "same" if (g and p and g.group(1)==p.group(1)) else "")]+=1
print(c)
