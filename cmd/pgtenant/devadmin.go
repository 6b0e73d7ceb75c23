package main

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strings"

	"github.com/pgtenant/pgtenant/router"
)

// devAdminListen is dev's default admin address.
const devAdminListen = "127.0.0.1:9090"

// devAdminAddr settles dev's admin address before anything starts: the
// address asked for, or, when the default is taken and --admin-listen was
// not given, a free loopback port (two dev instances can then run side by
// side). The port is released again; router.New binds it a moment later.
func devAdminAddr(addr string, explicit bool) (string, error) {
	if addr == "" {
		return "", nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil && !explicit {
		ln, err = net.Listen("tcp", "127.0.0.1:0")
	}
	if err != nil {
		return "", fmt.Errorf("cannot listen on %s for the admin API: %w; pick another address with --admin-listen (\"\" turns it off)", addr, err)
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// devAdminToken reads dev's admin API token, creating it on first run;
// PGTENANT_ADMIN_TOKEN, when set, wins.
func devAdminToken(path string) (string, error) {
	if t := os.Getenv(router.EnvAdminToken); t != "" {
		return t, nil
	}
	b, err := os.ReadFile(path)
	if t := strings.TrimSpace(string(b)); err == nil && t != "" {
		return t, nil
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	raw := make([]byte, 24)
	_, _ = rand.Read(raw)
	token := base64.RawURLEncoding.EncodeToString(raw)
	if err := os.WriteFile(path, []byte(token+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write admin token: %w", err)
	}
	return token, nil
}
