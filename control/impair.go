//go:build linux

package control

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
)

// Impairment is one impairment rule and what it did, as GET /impair lists
// them (a JSON array, in the order they are matched).
type Impairment struct {
	ID   int    `json:"id"`
	Rule string `json:"rule"`
	// Packets and Bytes the rule matched.
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
	// What it did to them.
	Delayed     uint64 `json:"delayed"`
	Lost        uint64 `json:"lost"`
	RateDropped uint64 `json:"rate_dropped"`
	Blackholed  uint64 `json:"blackholed"`
	Overflow    uint64 `json:"overflow"`
	// Resets are TCP connections it reset.
	Resets uint64 `json:"resets"`
}

// Impairments fetches the impairment rules in force.
func (c *Client) Impairments(ctx context.Context) ([]Impairment, error) {
	b, err := c.Get(ctx, "/impair")
	if err != nil {
		return nil, err
	}
	var rules []Impairment
	if err := json.Unmarshal(b, &rules); err != nil {
		return nil, fmt.Errorf("parsing /impair: %w", err)
	}
	return rules, nil
}

// AddImpairment adds a rule (POST /impair, the rule's text as the body),
// after the ones in force; it acts on running flows at their next packet.
func (c *Client) AddImpairment(ctx context.Context, rule string) (Impairment, error) {
	var added Impairment
	b, err := c.send(ctx, http.MethodPost, "/impair", []byte(rule))
	if err != nil {
		return added, err
	}
	if err := json.Unmarshal(b, &added); err != nil {
		return added, fmt.Errorf("parsing POST /impair's answer: %w", err)
	}
	return added, nil
}

// DeleteImpairment deletes the rule with id (DELETE /impair/ID).
func (c *Client) DeleteImpairment(ctx context.Context, id int) error {
	_, err := c.send(ctx, http.MethodDelete, "/impair/"+strconv.Itoa(id), nil)
	return err
}

// send makes a request with body and returns the body of a 200 answer; any
// other status is an error carrying the answer's text.
func (c *Client) send(ctx context.Context, method, path string, body []byte) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, "http://uloopd"+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c.where(), err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(b))
	}
	return b, nil
}
