package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"

	adminapi "github.com/pgtenant/pgtenant/admin"
	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/provision/static"
	"github.com/pgtenant/pgtenant/router"
)

// routeDSN is the DSN tenants route registers: --dsn or the first line of
// stdin (--dsn-stdin); "" with --delete.
func routeDSN(f *tenantsFlags, stdin io.Reader) (string, error) {
	n := 0
	for _, set := range []bool{*f.dsn != "", *f.dsnStdin, *f.passwd.delete} {
		if set {
			n++
		}
	}
	if n != 1 {
		return "", fmt.Errorf("%w: tenants route takes one of --dsn-stdin, --dsn and --delete", errUsage)
	}
	switch {
	case *f.dsn != "":
		return *f.dsn, nil
	case *f.dsnStdin:
		line, err := bufio.NewReader(stdin).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return "", fmt.Errorf("read the DSN from standard input: %w", err)
		}
		if line = strings.TrimSpace(line); line == "" {
			return "", errors.New("no DSN on standard input")
		}
		return line, nil
	}
	return "", nil
}

// placeAPI runs tenants place and tenants route through a router's admin
// API. mode is place's provider ("default" removes the placement); dsn is
// route's ("" deletes the route).
func placeAPI(ctx context.Context, w io.Writer, c apiClient, verb, tenant, provider, dsn string) error {
	t := "/v1/tenants/" + url.PathEscape(tenant)
	switch {
	case verb == "place" && provider == "default":
		var res adminapi.PlacementResult
		if err := c.do(ctx, http.MethodDelete, t+"/placement", &res); err != nil {
			return err
		}
		fmt.Fprintf(w, "tenant %s: no placement (had one: %s); the default provider %s creates it\n", tenant, yesNo(res.Deleted != nil && *res.Deleted), res.Provider)
	case verb == "place":
		var res adminapi.PlacementResult
		if err := c.send(ctx, http.MethodPut, t+"/placement", map[string]string{"provider": provider}, &res); err != nil {
			return err
		}
		fmt.Fprintf(w, "tenant %s placed on provider %s\n", tenant, res.Provider)
	case dsn == "":
		var res adminapi.ActionResult
		if err := c.do(ctx, http.MethodDelete, t+"/route", &res); err != nil {
			return err
		}
		fmt.Fprintf(w, "tenant %s: registered route removed\n", tenant)
	default:
		var res adminapi.ActionResult
		if err := c.send(ctx, http.MethodPut, t+"/route", adminapi.RouteSpec{DSN: dsn}, &res); err != nil {
			return err
		}
		printRoute(w, tenant, res.Route)
	}
	return nil
}

func printRoute(w io.Writer, tenant string, r *adminapi.Route) {
	fmt.Fprintf(w, "tenant %s routed", tenant)
	if r != nil {
		fmt.Fprintf(w, " to postgres://%s:xxxxx@%s:%d/%s (upstream TLS %s)", r.User, r.Host, r.Port, r.Database, r.TLS)
	}
	fmt.Fprintln(w, " (routers that cached its route follow when cache.ttl ends)")
}

// placeCatalog is placeAPI on the catalog directly (--config).
func placeCatalog(ctx context.Context, w io.Writer, cat *catalog.Catalog, fc router.Config, verb, tenant, provider, dsn string) error {
	names := fc.ProviderNames()
	switch {
	case verb == "place" && provider == "default":
		had, err := cat.Unplace(ctx, tenant)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "tenant %s: no placement (had one: %s); the default provider %s creates it\n", tenant, yesNo(had), names[0])
	case verb == "place":
		if !slices.Contains(names, provider) {
			return fmt.Errorf("provider %q is not configured (configured: %v; add it to provider.also)", provider, names)
		}
		if err := cat.Place(ctx, tenant, provider); err != nil {
			return err
		}
		fmt.Fprintf(w, "tenant %s placed on provider %s\n", tenant, provider)
	case !slices.Contains(names, static.Name):
		return fmt.Errorf("this configuration has no static provider: add static to provider.also (or make it provider.kind)")
	case dsn == "":
		if err := cat.DeleteRouteOn(ctx, tenant, static.Name, static.RegisteredID); err != nil {
			return err
		}
		fmt.Fprintf(w, "tenant %s: registered route removed\n", tenant)
	default:
		ep, err := static.ParseDSN(dsn)
		if err != nil {
			return fmt.Errorf("--dsn: %w", err)
		}
		ep.ProviderID = static.RegisteredID
		if err := cat.SetRoute(ctx, tenant, static.Name, ep); err != nil {
			return err
		}
		printRoute(w, tenant, &adminapi.Route{Host: ep.Host, Port: ep.Port, Database: ep.Database, User: ep.User, TLS: ep.TLS})
	}
	return nil
}
