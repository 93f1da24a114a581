# plot.gp — the benchmark plots, from the data bench_summary.py writes.
# usage: gnuplot -e "dir='results'" scripts/plot.gp
if (!exists("dir")) dir = "results"
set terminal pngcairo noenhanced size 1100,560 font "DejaVu Sans,10"
set termoption noenhanced
set datafile separator "\t"
set datafile missing "?"
set key top left
set grid ytics

# ---- latency by operation: pmpage beside its baselines ---------------------------------------------
# latency.dat index 0: one bar per line (x, ns, kind, label above the bar); index 1: the operations'
# labels at their groups' centres. A colour means one thing everywhere (bench_summary.py's kinds).
set output dir."/latency.png"
set terminal pngcairo noenhanced size 1400,640 font "DejaVu Sans,10"
set title "Latency per operation, best of the repetitions (log scale); each baseline is named above its bar\nslot pair: alloc_pages_to + free_pages_from, what engines use; floors: what this machine allows (an atomic refcount pair; one 64-byte persist)"
set ylabel "ns per operation"
set logscale y
set style fill solid 0.85 border -1
set boxwidth 0.9
set xtics rotate by 30 right nomirror scale 0
set bmargin 6
set rmargin 4
stats dir."/latency.dat" index 0 using 2 nooutput
set yrange [0.1:STATS_max * 40]
set xrange [-1:*]
set key top left reverse Left
kind_rgb(k) = k == 1 ? 0x1f77b4 : k == 2 ? 0x2ca02c : k == 3 ? 0xff7f0e : 0x7f7f7f
plot dir."/latency.dat" index 0 using 1:2:(0.9):(kind_rgb($3)) with boxes lc rgb variable notitle, \
     ''                index 0 using 1:($2 * 1.25):4 with labels rotate by 90 left font ",8" notitle, \
     ''                index 1 using 1:(1e-30):xtic(2) with points notitle, \
     1/0 with boxes lc rgb "#1f77b4" title "pmpage, persistent pool", \
     1/0 with boxes lc rgb "#2ca02c" title "pmpage, volatile pool", \
     1/0 with boxes lc rgb "#ff7f0e" title "baseline (named above its bar)", \
     1/0 with boxes lc rgb "#7f7f7f" title "floor (this machine)"
unset logscale y
unset style
unset bmargin
unset rmargin
unset xrange
set key default
set key top left
set xtics norotate mirror scale default
set terminal pngcairo noenhanced size 1100,560 font "DejaVu Sans,10"

# ---- DRAM vs device size ----------------------------------------------------------------------------
set output dir."/dram_vs_size.png"
set title "Descriptor DRAM vs pool size (sparse pools, unsplit)"
set xlabel "pool size (GiB)"
set xrange [0.7:1500]
set ylabel "bytes"
set logscale xy
set format y "%.0s %cB"
set yrange [*:*]
plot dir."/sweep.dat" using 1:4 with linespoints lw 2 pt 7 title "flat model: 64 B per 4 KiB (kernel)", \
     ''              using 1:2 with linespoints lw 2 pt 5 title "pmpage: stats().descriptor_bytes", \
     ''              using 1:3 with linespoints lw 2 pt 9 title "pmpage: RssAnon growth at open (all DRAM)"

# ---- open time vs device size ---------------------------------------------------------------------
set output dir."/open_vs_size.png"
set title "Open / initialisation time vs pool size"
set ylabel "ms"
set format y "%g"
plot dir."/sweep.dat" using 1:6 with linespoints lw 2 pt 7 lc rgb "#9400d3" title "flat model: memmap init (measured)", \
     ''              using 1:7 with lines lw 2 dt 2 lc rgb "#9400d3" title "flat model: linear extrapolation", \
     ''              using 1:5 with linespoints lw 2 pt 5 title "pmpage: pool::open"
