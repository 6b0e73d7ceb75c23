package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
)

// procStatus is what Run reads about a target's serving process.
type procStatus struct {
	rssKB, threads int64
}

// readProcStatus reads VmRSS (kB) and Threads from /proc/pid/status.
func readProcStatus(pid int) (procStatus, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return procStatus{}, err
	}
	return parseProcStatus(b)
}

func parseProcStatus(b []byte) (procStatus, error) {
	var st procStatus
	var haveRSS, haveThreads bool
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		key, val, ok := bytes.Cut(sc.Bytes(), []byte(":"))
		if !ok {
			continue
		}
		fields := bytes.Fields(val)
		if len(fields) == 0 {
			continue
		}
		n, err := strconv.ParseInt(string(fields[0]), 10, 64)
		if err != nil {
			continue
		}
		switch string(key) {
		case "VmRSS":
			st.rssKB, haveRSS = n, true
		case "Threads":
			st.threads, haveThreads = n, true
		}
	}
	if !haveRSS || !haveThreads {
		// Kernel threads and zombies have no VmRSS.
		return st, fmt.Errorf("no VmRSS or Threads in /proc status")
	}
	return st, nil
}
