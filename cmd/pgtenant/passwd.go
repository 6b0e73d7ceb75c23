package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"

	adminapi "github.com/pgtenant/pgtenant/admin"
	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/proxy"
)

// errNoTerminal is promptPassword's error when standard input is no
// terminal to prompt on.
var errNoTerminal = fmt.Errorf("%w: no terminal to ask for the password on: give --password-stdin or --verifier", errUsage)

// passwdFlags are the flags of tenants passwd.
type passwdFlags struct {
	stdin    *bool
	verifier *string
	delete   *bool
}

// passwdVerifier returns the verifier tenants passwd stores for tenant: the
// one given (--verifier, checked), or one made here from a password read
// from standard input (--password-stdin: its first line) or asked for on
// the terminal, twice, without echo. The password never leaves this
// process: only the verifier goes to the catalog or the admin API.
func passwdVerifier(f passwdFlags, tenant string, stdin *os.File, stderr io.Writer) (string, error) {
	if *f.verifier != "" {
		if _, err := proxy.ParseTenantVerifier(*f.verifier); err != nil {
			return "", fmt.Errorf("--verifier: %w", err)
		}
		return *f.verifier, nil
	}
	var pw string
	if *f.stdin {
		line, err := bufio.NewReader(stdin).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return "", fmt.Errorf("--password-stdin: %w", err)
		}
		pw = strings.TrimRight(line, "\r\n")
	} else {
		var err error
		if pw, err = promptPassword(stdin, stderr, fmt.Sprintf("New password for tenant %s: ", tenant)); err != nil {
			return "", err
		}
		again, err := promptPassword(stdin, stderr, "Enter it again: ")
		if err != nil {
			return "", err
		}
		if again != pw {
			return "", errors.New("the passwords do not match; nothing changed")
		}
	}
	if pw == "" {
		return "", errors.New("empty password; nothing changed (--delete removes the tenant's secret)")
	}
	return proxy.NewTenantVerifier(pw)
}

// passwdCatalog sets or deletes tenant's own secret in the catalog
// directly; routers apply it within auth.per_tenant_refresh.
func passwdCatalog(ctx context.Context, w io.Writer, cat *catalog.Catalog, perTenant bool, tenant, verifier string) error {
	if verifier == "" {
		deleted, err := cat.DeleteCredential(ctx, tenant)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "tenant %s: own secret %s (routers follow within auth.per_tenant_refresh)\n", tenant, map[bool]string{true: "deleted", false: "was not set"}[deleted])
		return nil
	}
	if !perTenant {
		return fmt.Errorf("tenant %q: %w", tenant, adminapi.ErrPerTenantOff)
	}
	if err := cat.SetCredential(ctx, tenant, verifier); err != nil {
		return err
	}
	fmt.Fprintf(w, "tenant %s: own secret set; it opens this tenant only (routers follow within auth.per_tenant_refresh)\n", tenant)
	return nil
}

// passwdAPI sets (verifier not empty) or deletes tenant's own secret
// through a router's admin API, which applies it at once.
func passwdAPI(ctx context.Context, w io.Writer, c apiClient, tenant, verifier string) error {
	path := "/v1/tenants/" + url.PathEscape(tenant) + "/password"
	var res adminapi.ActionResult
	if verifier == "" {
		if err := c.do(ctx, http.MethodDelete, path, &res); err != nil {
			return err
		}
		deleted := res.Deleted != nil && *res.Deleted
		fmt.Fprintf(w, "tenant %s: own secret %s (other routers follow within auth.per_tenant_refresh)\n", tenant, map[bool]string{true: "deleted", false: "was not set"}[deleted])
		return nil
	}
	if err := c.send(ctx, http.MethodPut, path, map[string]string{"verifier": verifier}, &res); err != nil {
		return err
	}
	fmt.Fprintf(w, "tenant %s: own secret set; it opens this tenant only (other routers follow within auth.per_tenant_refresh)\n", tenant)
	return nil
}
