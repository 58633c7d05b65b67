#!/bin/sh
# Aligns this instance's shard of reads to the reference: every 40-base window of the reference is indexed, and
# each read is looked up exactly. Writes "<read id> <position>" ("*" when it does not align) to /data/aligned.
set -eu
shard=$(printf 'shard-%02d' "$BATCH_TASK_INSTANCE_INDEX")
mkdir -p /data/aligned
awk 'NR == FNR {
        for (i = 1; i <= length($0) - 39; i++) { k = substr($0, i, 40); if (!(k in pos)) pos[k] = i - 1 }
        next
     }
     { if ($2 in pos) { print $1, pos[$2]; aligned++ } else { print $1, "*" } }
     END { printf "%d of %d reads aligned\n", aligned, FNR > "/dev/stderr" }' \
    /data/ref/reference.txt "/data/shards/$shard" >"/data/aligned/$shard.aln"
echo "instance $BATCH_TASK_INSTANCE_INDEX of $BATCH_TASK_INSTANCE_NUM aligned $shard"
