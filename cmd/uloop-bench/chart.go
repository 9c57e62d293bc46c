//go:build linux

package main

import (
	"fmt"
	"image/color"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
	"gonum.org/v1/plot/vg/vgsvg"
)

var (
	kernelColor = color.RGBA{R: 0xa0, G: 0xa0, B: 0xa0, A: 0xff}
	uloopColor  = color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}
)

// chartBar is one charted figure: uloop/kernel over the pairs of runs.
type chartBar struct {
	label string
	ratio spread
}

// chartBars splits the charted metrics of r into rates (higher is better)
// and latencies (lower is better): one panel each, so that no bar reads the
// wrong way round. A uloop-only case has no ratio to chart.
func chartBars(r *report) (rates, latencies []chartBar) {
	for _, c := range r.Cases {
		if c.UloopOnly {
			continue
		}
		for _, m := range c.Metrics {
			if m.Chart == "" {
				continue
			}
			b := chartBar{label: m.Chart, ratio: c.Summary[m.Key].Ratio}
			if m.Higher {
				rates = append(rates, b)
			} else {
				latencies = append(latencies, b)
			}
		}
	}
	return rates, latencies
}

// writeCharts draws bench.png and bench.svg in dir: each charted figure of
// uloop as a bar against kernel lo's, normalised to kernel = 1.0, with the
// range of the per-pair ratios as a whisker.
func writeCharts(r *report, dir string) ([]string, error) {
	rates, lats := chartBars(r)
	var rows [][]*plot.Plot
	if len(rates) > 0 {
		p, err := ratioPlot("Throughput and rates: higher is better", rates)
		if err != nil {
			return nil, err
		}
		rows = append(rows, []*plot.Plot{p})
	}
	if len(lats) > 0 {
		p, err := ratioPlot("Latency: lower is better", lats)
		if err != nil {
			return nil, err
		}
		rows = append(rows, []*plot.Plot{p})
	}
	if len(rows) == 0 {
		return nil, nil
	}
	rows[0][0].Title.Text = fmt.Sprintf("uloop / kernel lo, %d interleaved pair(s) per case, %s\n%s",
		r.Config.Runs, r.Started.Format("2006-01-02 15:04 MST"), rows[0][0].Title.Text)

	w, h := 9*vg.Inch, vg.Length(len(rows))*3.6*vg.Inch
	var written []string
	for _, format := range []string{"png", "svg"} {
		var c interface {
			vg.CanvasSizer
			io.WriterTo
		}
		if format == "png" {
			c = vgimg.PngCanvas{Canvas: vgimg.NewWith(vgimg.UseWH(w, h), vgimg.UseDPI(110))}
		} else {
			c = vgsvg.New(w, h)
		}
		dc := draw.New(c)
		tiles := draw.Tiles{Rows: len(rows), Cols: 1, PadX: vg.Millimeter, PadY: 4 * vg.Millimeter,
			PadTop: 2 * vg.Millimeter, PadBottom: 2 * vg.Millimeter, PadLeft: 2 * vg.Millimeter, PadRight: 4 * vg.Millimeter}
		canvases := plot.Align(rows, tiles, dc)
		for i := range rows {
			rows[i][0].Draw(canvases[i][0])
		}
		path := filepath.Join(dir, "bench."+format)
		if err := writeTo(path, c); err != nil {
			return written, err
		}
		written = append(written, path)
	}
	return written, nil
}

func writeTo(path string, w io.WriterTo) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := w.WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// ratioPlot draws, per figure, a grey kernel bar at 1.0 and a blue uloop bar
// at the median pair ratio, labelled, with a whisker over the ratios' range.
func ratioPlot(title string, bars []chartBar) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = title
	p.Y.Label.Text = "relative to kernel lo (= 1.0)"
	p.Y.Min = 0
	p.Legend.Top = true
	p.Legend.Left = true

	const barPts = 22
	width := vg.Points(barPts)
	kernel := make(plotter.Values, len(bars))
	uloop := make(plotter.Values, len(bars))
	labels := plotter.XYLabels{XYs: make(plotter.XYs, len(bars)), Labels: make([]string, len(bars))}
	top := 1.0
	names := make([]string, len(bars))
	for i, b := range bars {
		names[i] = b.label
		kernel[i] = 1
		labels.XYs[i] = plotter.XY{X: float64(i), Y: b.ratio.Max}
		if b.ratio.N == 0 {
			labels.Labels[i] = "n/a"
			labels.XYs[i].Y = 0
			continue
		}
		uloop[i] = b.ratio.Median
		labels.Labels[i] = fmt.Sprintf("%.2f", b.ratio.Median)
		top = max(top, b.ratio.Max)
	}
	p.Y.Max = top * 1.3 // room for the labels and the legend
	p.Y.Tick.Marker = niceTicks{}

	kb, err := plotter.NewBarChart(kernel, width)
	if err != nil {
		return nil, err
	}
	kb.Color, kb.LineStyle.Width, kb.Offset = kernelColor, 0, -width/2
	ub, err := plotter.NewBarChart(uloop, width)
	if err != nil {
		return nil, err
	}
	ub.Color, ub.LineStyle.Width, ub.Offset = uloopColor, 0, width/2
	whiskers := &rangeWhiskers{bars: bars, offset: width / 2, cap: width / 3}
	lb, err := plotter.NewLabels(labels)
	if err != nil {
		return nil, err
	}
	for i := range lb.TextStyle {
		lb.TextStyle[i].XAlign = draw.XCenter
	}
	lb.Offset = vg.Point{X: width / 2, Y: vg.Points(3)}

	one := plotter.NewFunction(func(float64) float64 { return 1 })
	one.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
	one.Color = color.Gray{Y: 0x60}
	p.Add(plotter.NewGrid(), kb, ub, one, whiskers, lb)
	p.Legend.Add("kernel lo", kb)
	p.Legend.Add("uloop (median of pair ratios; whisker: their range)", ub)
	p.NominalX(names...)
	return p, nil
}

// niceTicks labels 4 to 10 ticks at steps of 1, 2 or 5 times a power of
// ten; plot.DefaultTicks may label only the two ends of a 0-to-25 axis.
type niceTicks struct{}

func (niceTicks) Ticks(lo, hi float64) []plot.Tick {
	if !(hi > lo) {
		return nil
	}
	mag := math.Pow(10, math.Floor(math.Log10((hi-lo)/4)))
	step := mag
	for _, m := range []float64{1, 2, 5, 10} {
		if step = m * mag; (hi-lo)/step <= 10 {
			break
		}
	}
	var ticks []plot.Tick
	for k := math.Ceil(lo / step); k*step <= hi+step*1e-9; k++ {
		// Through 12 digits and back: 3*0.2 is 0.6000000000000001.
		v, _ := strconv.ParseFloat(strconv.FormatFloat(k*step, 'g', 12, 64), 64)
		ticks = append(ticks, plot.Tick{Value: v, Label: strconv.FormatFloat(v, 'g', -1, 64)})
	}
	return ticks
}

// rangeWhiskers draws, over each uloop bar, a line from the lowest to the
// highest pair ratio. (plotter.YErrorBars cannot be shifted by a bar's
// Offset.)
type rangeWhiskers struct {
	bars   []chartBar
	offset vg.Length
	cap    vg.Length
}

func (w *rangeWhiskers) Plot(c draw.Canvas, p *plot.Plot) {
	trX, trY := p.Transforms(&c)
	style := draw.LineStyle{Color: color.Black, Width: vg.Points(1)}
	for i, b := range w.bars {
		if b.ratio.N < 2 {
			continue
		}
		x := trX(float64(i)) + w.offset
		lo, hi := trY(b.ratio.Min), trY(b.ratio.Max)
		c.StrokeLine2(style, x, lo, x, hi)
		c.StrokeLine2(style, x-w.cap/2, lo, x+w.cap/2, lo)
		c.StrokeLine2(style, x-w.cap/2, hi, x+w.cap/2, hi)
	}
}
