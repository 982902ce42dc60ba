#!/bin/bash
# Interleaved before/after, one part at a time: before = 0375683 (/tmp/base-lead), after = HEAD.
PY=/work/main/.venv/bin/python
for part in large small shim s3 http small_http peers load; do
  for side in before after; do
    if [ $side = before ]; then dir=/tmp/bench-before; pp=/tmp/base-lead; else dir=/tmp/bench-after; pp=/tmp/bench-after; fi
    echo "$(date -u +%H:%M:%S) $part $side load $(cut -d' ' -f1-3 /proc/loadavg)" >> /tmp/bench-out/log.txt
    (cd $dir && PYTHONPATH=$pp timeout 2400 $PY -c "import async_store,sys; print(async_store.__file__)" >> /tmp/bench-out/log.txt 2>&1)
    (cd $dir && PYTHONPATH=$pp timeout 2400 $PY -m bench.run --only $part --out /tmp/bench-out/$side-$part.md > /tmp/bench-out/$side-$part.txt 2>&1)
    echo "$(date -u +%H:%M:%S) $part $side rc=$?" >> /tmp/bench-out/log.txt
  done
done
echo done >> /tmp/bench-out/log.txt
