#!/bin/sh
# Cuts the reads into one shard per align instance: shard-00, shard-01, … in /data/shards.
set -eu
shards=${SHARDS:-4}
mkdir -p /data/shards
split -d -a 2 -n "l/$shards" /data/input/reads.txt /data/shards/shard-
echo "split $(wc -l </data/input/reads.txt) reads into $shards shards"
