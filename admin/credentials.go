package admin

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/pgtenant/pgtenant/proxy"
)

// ErrPerTenantOff is Credentials.SetCredential's error on a router whose
// auth.per_tenant is false: the secret would be stored and never used.
var ErrPerTenantOff = errors.New("per-tenant secrets are off on this router: set auth.per_tenant: true (and restart) first")

// passwordBody is the body of PUT /v1/tenants/{id}/password: exactly one
// of the two.
type passwordBody struct {
	// Password is the new secret in plain; only its verifier is stored.
	Password string `json:"password"`
	// Verifier is a SCRAM-SHA-256 verifier made elsewhere (pg_authid's
	// format, 4096 iterations, 16-byte salt).
	Verifier string `json:"verifier"`
}

// tenantPassword serves PUT /v1/tenants/{id}/password {"password": "..."}
// or {"verifier": "SCRAM-SHA-256$..."}, and DELETE: the tenant's own secret
// (auth.per_tenant), which opens that tenant only. It is stored for every
// router instance (as a verifier: the password itself never is) and
// applied on this one at once. Neither the password nor the verifier is
// ever logged or echoed.
func (h *Handler) tenantPassword(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPut && r.Method != http.MethodDelete {
		methodNotAllowed(w, r, "PUT, DELETE")
		return
	}
	id := h.tenantID(w, r)
	if id == "" {
		return
	}
	if h.cfg.Credentials == nil {
		writeError(w, http.StatusNotImplemented, "this router has no per-tenant secrets")
		return
	}
	log := h.log.With("tenant", id, "remote", r.RemoteAddr)
	if r.Method == http.MethodDelete {
		deleted, err := h.cfg.Credentials.DeleteCredential(r.Context(), id)
		if err != nil {
			h.internalError(w, "delete tenant secret", err)
			return
		}
		log.Info("admin: tenant secret deleted", "had_one", deleted)
		no := false
		writeJSON(w, http.StatusOK, ActionResult{Tenant: id, OwnSecret: &no, Deleted: &deleted})
		return
	}

	var body passwordBody
	if err := decodeJSON(w, r, 4096, &body); err != nil || (body.Password == "") == (body.Verifier == "") {
		writeError(w, http.StatusBadRequest, `want a JSON body {"password": "..."} or {"verifier": "SCRAM-SHA-256$4096:<salt>$<StoredKey>:<ServerKey>"}`)
		return
	}
	verifier, how := body.Verifier, "verifier"
	if body.Password != "" {
		var err error
		if verifier, err = proxy.NewTenantVerifier(body.Password); err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		how = "password"
	} else if _, err := proxy.ParseTenantVerifier(verifier); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	err := h.cfg.Credentials.SetCredential(r.Context(), id, verifier)
	switch {
	case errors.Is(err, ErrPerTenantOff):
		writeError(w, http.StatusConflict, fmt.Sprintf("tenant %q: %v", id, err))
		return
	case err != nil:
		h.internalError(w, "set tenant secret", err)
		return
	}
	log.Info("admin: tenant secret set", "from", how)
	yes := true
	writeJSON(w, http.StatusOK, ActionResult{Tenant: id, OwnSecret: &yes})
}
