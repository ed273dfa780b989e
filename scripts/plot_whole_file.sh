#!/usr/bin/env bash
# docs/plots/whole-file-ppl.png from docs/plots/whole-file.dat (docs/results.md, "Whole model below
# one bit"): test perplexity against whole-file bits/param, one series per method. Needs gnuplot
# (Debian: gnuplot-nox).
set -euo pipefail
cd "$(dirname "$0")/../docs/plots"
gnuplot <<'GP'
set terminal pngcairo size 900,560 font ",11"
set output "whole-file-ppl.png"
set title "sb-30m: perplexity vs whole-file bits/param (QAT 131,072 tokens; wiki.test.raw, 40 windows)"
set xlabel "whole-file bits per parameter (every stored bit / every parameter)"
set ylabel "perplexity (log scale)"
set logscale y
set grid
set key top right
set xrange [0:3.4]
plot "whole-file.dat" index 0 using 1:2 with points pt 7 ps 1.4 title "LittleBit 0.55, linear layers only (BF16 embedding/head)", \
     "" index 1 using 1:2 with points pt 5 ps 1.4 title "LittleBit, linear 0.55, sensitivity-allocated", \
     "" index 2 using 1:2 with points pt 9 ps 1.4 title "LittleBit, whole 0.8, embedding/head rtn 2-bit", \
     "" index 3 using 1:2 with points pt 11 ps 1.4 title "LittleBit, whole 0.8, embedding/head LittleBit (trained)", \
     74.70 with lines dt 2 lc rgb "gray" title "BF16 (16 bits/param): 74.70"
GP
