package route

import (
	"net/netip"
	"strings"
	"testing"
)

func TestConfigValidate(t *testing.T) {
	p := netip.MustParsePrefix
	tests := []struct {
		name    string
		c       Config
		wantErr string // "" means valid
	}{
		{"defaults", Config{Device: "ulo0"}, ""},
		{"whole block", Config{Device: "ulo0", Prefix: p("127.0.0.0/8")}, ""},
		{"sub prefix", Config{Device: "ulo0", Prefix: p("127.77.0.0/16")}, ""},
		{"single address", Config{Device: "ulo0", Prefix: p("127.0.0.2/32")}, ""},
		{"15-byte name", Config{Device: "abcdefghijklmno"}, ""},
		{"table and priority", Config{Device: "ulo0", Table: 1000, Priority: 32764}, ""},
		{"no device", Config{}, "empty"},
		{"16-byte name", Config{Device: "abcdefghijklmnop"}, "longer than 15"},
		{"slash in name", Config{Device: "a/b"}, "not a valid"},
		{"colon in name", Config{Device: "eth0:1"}, "not a valid"},
		{"space in name", Config{Device: "u lo"}, "not a valid"},
		{"dot dot", Config{Device: ".."}, "not a valid"},
		{"lo", Config{Device: "lo"}, "loopback"},
		{"outside 127/8", Config{Device: "ulo0", Prefix: p("10.0.0.0/8")}, "not inside"},
		{"wider than 127/8", Config{Device: "ulo0", Prefix: p("126.0.0.0/7")}, "not inside"},
		{"IPv6", Config{Device: "ulo0", Prefix: p("::1/128")}, "IPv4"},
		{"IPv4-mapped", Config{Device: "ulo0", Prefix: p("::ffff:127.0.0.0/104")}, "IPv4"},
		{"broadcast only", Config{Device: "ulo0", Prefix: p("127.255.255.255/32")}, "broadcast"},
		{"host bits", Config{Device: "ulo0", Prefix: p("127.77.1.0/16")}, "host bits"},
		{"invalid prefix", Config{Device: "ulo0", Prefix: netip.PrefixFrom(netip.MustParseAddr("127.0.0.1"), 33)}, "IPv4"},
		{"table local", Config{Device: "ulo0", Table: 255}, "table"},
		{"table main", Config{Device: "ulo0", Table: 254}, "table"},
		{"negative table", Config{Device: "ulo0", Table: -1}, "table"},
		{"negative priority", Config{Device: "ulo0", Priority: -1}, "priority"},
		{"local rule after main", Config{Device: "ulo0", Priority: 32765}, "priority"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.c.Validate()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("Validate(%+v) = %v, want nil", tt.c, err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("Validate(%+v) = %v, want error containing %q", tt.c, err, tt.wantErr)
			}
		})
	}
}

func TestSource(t *testing.T) {
	tests := []struct{ prefix, want string }{
		{"127.0.0.0/8", "127.0.0.1"},
		{"127.0.0.0/24", "127.0.0.1"},
		{"127.77.0.0/16", "127.77.0.1"},
		{"127.0.0.0/31", "127.0.0.1"},
		{"127.77.1.2/31", "127.77.1.2"},
		{"127.255.255.254/31", "127.255.255.254"},
		{"127.77.1.2/32", "127.77.1.2"},
		{"127.0.0.0/32", "127.0.0.0"},
	}
	if got := (Config{Device: "ulo0"}).Source().String(); got != "127.0.0.1" {
		t.Errorf("source of the default prefix: got %s, want 127.0.0.1", got)
	}
	for _, tt := range tests {
		c := Config{Device: "ulo0", Prefix: netip.MustParsePrefix(tt.prefix)}
		if err := c.Validate(); err != nil {
			t.Errorf("Validate(%s): %v", tt.prefix, err)
		}
		if got := c.Source().String(); got != tt.want {
			t.Errorf("source of %s: got %s, want %s", tt.prefix, got, tt.want)
		}
	}
}
