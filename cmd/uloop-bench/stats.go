//go:build linux

package main

import (
	"math"
	"slices"
	"time"
)

// median returns the median of xs (the mean of the two middle values when
// len(xs) is even), or NaN for no values. xs is not modified.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// percentile returns the p-th percentile (0 < p <= 100) of sorted by the
// nearest-rank method: the smallest value with at least p% of the values at
// or below it. It is always one of the measured values, never interpolated,
// so a p99 over 1000 echoes is the 990th fastest. NaN for no values.
func percentile(sorted []float64, p float64) float64 {
	n := len(sorted)
	if n == 0 {
		return math.NaN()
	}
	// The epsilon keeps float rounding from bumping an exact rank up:
	// 99.9/100*1000 is 999.0000000000001.
	rank := int(math.Ceil(p/100*float64(n) - 1e-9))
	rank = min(max(rank, 1), n)
	return sorted[rank-1]
}

// latencySummary is the distribution of one run's latency samples, in
// microseconds.
type latencySummary struct {
	Count  int     `json:"count"`
	MinUS  float64 `json:"min_us"`
	MeanUS float64 `json:"mean_us"`
	P50US  float64 `json:"p50_us"`
	P90US  float64 `json:"p90_us"`
	P99US  float64 `json:"p99_us"`
	P999US float64 `json:"p999_us"`
	MaxUS  float64 `json:"max_us"`
}

// summarizeMicros summarizes samples given in microseconds (reordering them).
func summarizeMicros(us []float64) latencySummary {
	if len(us) == 0 {
		return latencySummary{}
	}
	slices.Sort(us)
	var sum float64
	for _, v := range us {
		sum += v
	}
	return latencySummary{
		Count:  len(us),
		MinUS:  us[0],
		MeanUS: sum / float64(len(us)),
		P50US:  percentile(us, 50),
		P90US:  percentile(us, 90),
		P99US:  percentile(us, 99),
		P999US: percentile(us, 99.9),
		MaxUS:  us[len(us)-1],
	}
}

// summarizeDurations is summarizeMicros for durations.
func summarizeDurations(ds []time.Duration) latencySummary {
	us := make([]float64, len(ds))
	for i, d := range ds {
		us[i] = float64(d) / float64(time.Microsecond)
	}
	return summarizeMicros(us)
}

// spread is the median and range of one side's values for one metric.
type spread struct {
	N      int     `json:"n"`
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
}

// spreadOf summarizes xs; N is 0 (and the rest zero, not NaN, which JSON
// cannot carry) when there are no values.
func spreadOf(xs []float64) spread {
	if len(xs) == 0 {
		return spread{}
	}
	return spread{N: len(xs), Median: median(xs), Min: slices.Min(xs), Max: slices.Max(xs)}
}

// pairRatios returns uloop[i]/kernel[i] for each interleaved pair i in which
// both runs produced the figure (ok) and kernel[i] is not zero. Pairing runs
// that ran back to back cancels most of the drift a shared machine adds (a
// neighbour's build, thermal state): both sides of a pair saw nearly the same
// conditions, which the medians of each side alone do not guarantee.
func pairRatios(kernel, uloop []float64, kernelOK, uloopOK []bool) []float64 {
	var rs []float64
	for i := range min(len(kernel), len(uloop)) {
		if !kernelOK[i] || !uloopOK[i] || kernel[i] == 0 {
			continue
		}
		rs = append(rs, uloop[i]/kernel[i])
	}
	return rs
}
