package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

func TestBucketsAreContiguous(t *testing.T) {
	next := int64(0)
	for i := range numBuckets {
		lo, width := bucketRange(i)
		if lo != next {
			t.Fatalf("bucket %d starts at %d, want %d", i, lo, next)
		}
		if bucketOf(lo) != i || bucketOf(lo+width-1) != i {
			t.Fatalf("bucket %d [%d, %d) does not map back to itself", i, lo, lo+width)
		}
		if lo >= 2*subCount && float64(width)/float64(lo) > 1.0/subCount {
			t.Fatalf("bucket %d is %d wide at %d: wider than 1/%d", i, width, lo, subCount)
		}
		next = lo + width
	}
	if next-1 != maxTracked {
		t.Fatalf("last bucket ends at %d, want %d", next-1, maxTracked)
	}
}

func TestRedactDSN(t *testing.T) {
	tests := []struct{ name, dsn, want string }{
		{"url", "postgres://u:s3cret@h:5432/db?sslmode=disable", "postgres://u:xxxxx@h:5432/db?sslmode=disable"},
		{"template", "postgres://{tenant}:s3cret@127.0.0.1:6432/app", "postgres://{tenant}:xxxxx@127.0.0.1:6432/app"},
		{"password in query", "postgresql://u@h/db?password=s3cret&x=1", "postgresql://u@h/db?password=xxxxx&x=1"},
		{"no password", "postgres://u@h/db", "postgres://u@h/db"},
		{"key value", "host=h user=u password=s3cret dbname=db", "host=h user=u password=xxxxx dbname=db"},
		{"key value quoted", "host=h password='s3 cret' dbname=db", "host=h password=xxxxx dbname=db"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := redactDSN(tt.dsn)
			if got != tt.want {
				t.Errorf("redactDSN = %q, want %q", got, tt.want)
			}
			if strings.Contains(Target{Label: "x", DSN: tt.dsn}.String(), "s3") {
				t.Errorf("Target.String leaks the password: %q", Target{DSN: tt.dsn})
			}
		})
	}
}

func TestParseProcStatus(t *testing.T) {
	st, err := parseProcStatus([]byte("Name:\tpgtenant\nVmPeak:\t  99999 kB\nVmRSS:\t   20480 kB\nThreads:\t9\n"))
	if err != nil || st.rssKB != 20480 || st.threads != 9 {
		t.Fatalf("parseProcStatus = %+v, %v", st, err)
	}
	if _, err := parseProcStatus([]byte("Name:\tkthreadd\nThreads:\t1\n")); err == nil {
		t.Fatal("no error for a status without VmRSS")
	}
	st, err = readProcStatus(os.Getpid())
	if err != nil || st.rssKB <= 0 || st.threads <= 0 {
		t.Fatalf("readProcStatus(self) = %+v, %v", st, err)
	}
}

func TestClassify(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"server error", &pgconn.PgError{Code: "28P01"}, "28P01"},
		{"wrapped server error", fmt.Errorf("connect: %w", &pgconn.PgError{Code: "57P03"}), "57P03"},
		{"deadline", fmt.Errorf("x: %w", context.DeadlineExceeded), ErrClassTimeout},
		{"net timeout", &net.OpError{Op: "dial", Err: os.ErrDeadlineExceeded}, ErrClassTimeout},
		{"refused", &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}, ErrClassNetwork},
		{"eof", io.ErrUnexpectedEOF, ErrClassNetwork},
		{"other", errors.New("tls: bad certificate"), ErrClassNetwork},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := classify(tt.err); got != tt.want {
				t.Errorf("classify = %q, want %q", got, tt.want)
			}
		})
	}
}
