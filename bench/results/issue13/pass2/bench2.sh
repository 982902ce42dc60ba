#!/bin/bash
PY=/work/main/.venv/bin/python
OUT=/tmp/bench-out2
for part in small peers shim small_http s3; do
  for side in before after; do
    if [ $side = before ]; then dir=/tmp/bench-before; pp=/tmp/base-lead; else dir=/tmp/bench-after; pp=/tmp/bench-after; fi
    echo "$(date -u +%H:%M:%S) $part $side load $(cut -d' ' -f1-3 /proc/loadavg)" >> $OUT/log.txt
    (cd $dir && PYTHONPATH=$pp timeout 2400 $PY -m bench.run --only $part --out $OUT/$side-$part.md > $OUT/$side-$part.txt 2>&1)
    echo "$(date -u +%H:%M:%S) $part $side rc=$?" >> $OUT/log.txt
  done
done
echo done >> $OUT/log.txt
