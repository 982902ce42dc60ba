#!/bin/bash
PY=/work/main/.venv/bin/python
OUT=/tmp/b3/out
for part in small peers; do
  for side in before after before after; do
    n=$(ls $OUT | grep -c "^$side-$part")
    echo "$(date -u +%H:%M:%S) $part $side load $(cut -d' ' -f1-3 /proc/loadavg)" >> $OUT/log.txt
    (cd /tmp/b3/$side && PYTHONPATH=/tmp/b3/$side timeout 1200 $PY -m bench.run --only $part --out $OUT/$side-$part-$n.md > $OUT/$side-$part-$n.txt 2>&1)
    echo "$(date -u +%H:%M:%S) $part $side rc=$?" >> $OUT/log.txt
  done
done
echo done >> $OUT/log.txt
