# plot.gp — the benchmark plots, from the data bench_summary.py writes.
# usage: gnuplot -e "dir='results'" scripts/plot.gp
if (!exists("dir")) dir = "results"
set terminal pngcairo size 1100,560 font "DejaVu Sans,10"
set termoption noenhanced
set datafile separator "\t"
set datafile missing "?"
set key top left
set grid ytics

# ---- latency by operation: pmpage beside its baseline ---------------------------------------------
set output dir."/latency.png"
set title "Latency per operation, best of the repetitions (log scale)\nbaseline: flat kernel model for translation and get/put, pmemobj for allocation, mimalloc / jemalloc for volatile pools; floors last"
set rmargin 10
set ylabel "ns per operation"
set logscale y
set style data histogram
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set xtics rotate by -30 left
set yrange [0.1:*]
plot dir."/latency.dat" using 2:xtic(1) title "pmpage" lc rgb "#1f77b4", \
     ''                using 3 title "baseline" lc rgb "#ff7f0e"
unset logscale y
unset style
unset rmargin
set xtics norotate

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
