#!/bin/sh
# Merges the shards' alignments into one file, sorted by read, and writes the summary: reads, aligned, unaligned,
# reference bases covered by an aligned read, and the reference's length.
set -eu
mkdir -p /data/result
cat /data/aligned/*.aln | sort -k1,1 >/data/result/alignments.txt
genome=$(tr -d '\n' </data/ref/reference.txt | wc -c)
awk -v genome="$genome" '
    { reads++; if ($2 == "*") { unaligned++ } else { aligned++; for (i = $2; i < $2 + 40; i++) covered[i] = 1 } }
    END {
        n = 0; for (i in covered) n++
        printf "reads %d\naligned %d\nunaligned %d\ncovered_bases %d\ngenome_length %d\n", reads, aligned, unaligned, n, genome
    }' /data/result/alignments.txt >/data/result/summary.txt
cat /data/result/summary.txt
