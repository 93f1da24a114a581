# scaling.gp — the DES speed-ups of scripts/scaling_model.py (docs/scaling.md).
# usage: python3 scripts/scaling_model.py --dat /tmp/scaling.dat
#        gnuplot -e "dat='/tmp/scaling.dat'; out='docs/img/scaling.png'" scripts/scaling.gp
if (!exists("dat")) dat = "scaling.dat"
if (!exists("out")) out = "scaling.png"
set terminal pngcairo size 1100,520 font "DejaVu Sans,10"
set termoption noenhanced
set output out
set datafile separator "\t"
set multiplot layout 1,2 title "Modelled throughput (discrete-event simulation), speed-up over today's design on 1 CPU"
set logscale xy 2
set xrange [1:256]
set yrange [0.5:300]
set xlabel "CPUs"
set ylabel "speed-up"
set grid
set key top left Left reverse font ",9"
set title "order 0: own pages (local) and long-lived random heap"
plot x with lines dt 3 lc rgb "#999999" title "linear", \
     dat using 2:(strcol(1) eq "local" ? $4 : 1/0) with linespoints pt 7 lc rgb "#2ca02c" title "new, local pairs", \
     dat using 2:(strcol(1) eq "heap" ? $3 : 1/0) with linespoints pt 7 lc rgb "#d62728" title "old (one pool lock)", \
     dat using 2:(strcol(1) eq "heap" ? $4 : 1/0) with linespoints pt 5 lc rgb "#ff7f0e" title "new, heap, strict fullest-first", \
     dat using 2:(strcol(1) eq "heap" ? $5 : 1/0) with linespoints pt 9 lc rgb "#1f77b4" title "new, heap, refill threshold", \
     dat using 2:(strcol(1) eq "heap" ? $6 : 1/0) with linespoints pt 11 lc rgb "#9467bd" title "new, heap, threshold + work off the pool lock"
set title "remote frees and mixed orders 0..10"
plot x with lines dt 3 lc rgb "#999999" title "linear", \
     dat using 2:(strcol(1) eq "remote" ? $4 : 1/0) with linespoints pt 7 lc rgb "#2ca02c" title "new, remote frees", \
     dat using 2:(strcol(1) eq "mixed" ? $3 : 1/0) with linespoints pt 7 lc rgb "#d62728" title "old, mixed", \
     dat using 2:(strcol(1) eq "mixed" ? $4 : 1/0) with linespoints pt 5 lc rgb "#ff7f0e" title "new, mixed, strict", \
     dat using 2:(strcol(1) eq "mixed" ? $5 : 1/0) with linespoints pt 9 lc rgb "#1f77b4" title "new, mixed, threshold", \
     dat using 2:(strcol(1) eq "mixed" ? $6 : 1/0) with linespoints pt 11 lc rgb "#9467bd" title "new, mixed, threshold + off"
unset multiplot
