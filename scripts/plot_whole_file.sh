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
set key at graph 0.99, graph 0.64 right top box opaque
set yrange [60:1300]
set xrange [0:3.4]
set samples 1000
plot "whole-file.dat" index 0 using 1:2 with points pt 7 ps 1.4 title "(a) LittleBit 0.55, linear layers only (BF16 embedding/head)", \
     "" index 1 using 1:2 with points pt 5 ps 1.4 title "(a) linear 0.55, sensitivity-allocated", \
     "" index 2 using 1:2 with points pt 9 ps 1.4 title "(b) whole 0.8, embedding/head rtn 2-bit, frozen", \
     "" index 3 using 1:2 with linespoints pt 11 ps 1.4 lc rgb "#d95f02" title "(b) whole budget, embedding/head LittleBit (trained), uniform", \
     "" index 4 using 1:2 with linespoints pt 13 ps 1.4 lc rgb "#1b9e77" title "(c) whole budget, sensitivity-allocated (table included)", \
     "" index 5 using 1:2 with points pt 15 ps 1.4 lc rgb "#7570b3" title "(c') whole 0.8, table fixed, linears sensitivity-allocated", \
     "" index 6 using 1:2 with points pt 17 ps 1.6 lc rgb "#e7298a" title "(d) whole 0.8, rtn 2-bit table trained in QAT", \
     "" index 7 using 1:2 with points pt 6 ps 1.4 lc rgb "black" title "(a) linear 0.55, QAT hidden weight 0.04", \
     "" index 8 using 1:2 with points pt 4 ps 1.4 lc rgb "#66a61e" title "(e) whole 0.8, rtn table, rows by token frequency (mean 2.23/2.48/2.98)", \
     "" index 9 using 1:2 with points pt 3 ps 2.0 lc rgb "#e6ab02" title "(f) (e) at 2.48 + linears by sensitivity", \
     74.70 with lines dt 2 lc rgb "gray" title "BF16 (16 bits/param): 74.70", \
     (x <= 0.8 ? 564.1 : 1/0) with lines dt 3 lc rgb "red" title "target: <= 0.8 bits/param within 10% of (a) uniform: 564"
GP
