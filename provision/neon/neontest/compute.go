package neontest

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/internal/pgfront"
	"github.com/xdg-go/scram"
)

// The compute proxy: the fake's version of Neon's proxy. It terminates
// TLS, finds the endpoint from SNI (or options=endpoint=<id>),
// authenticates the client itself with SCRAM-SHA-256(-PLUS) against the
// role's Neon password, logs in to the branch's local database as the
// branch's local role (Backend) and relays bytes. BackendKeyData is the
// local server's own, so CancelRequests (plain or over TLS) are forwarded
// to it as they are.

const (
	maxSASLMessage   = 10000
	handshakeTimeout = 30 * time.Second
)

// Client-facing messages of Neon's proxy (docs/neon-api.md §8.3, §8.4).
// msgNoEndpoint, for an endpoint id that does not exist, is not covered
// there; its wording is the fake's own.
const (
	msgInsecure        = "connection is insecure (try using `sslmode=require`)"
	msgMissingEndpoint = "Endpoint ID is not specified. Either please upgrade the postgres client library (libpq) for SNI support or pass the endpoint ID (first part of the domain name) as a parameter: '?options=endpoint%3D<endpoint-id>'. See more at https://neon.tech/sni"
	msgNoEndpoint      = "The requested endpoint could not be found, or you don't have access to it. Please check the provided ID and try again."
	msgCouldNotConnect = "Couldn't connect to compute node"
)

// poolerParams are the startup parameters Neon's pooler (PgBouncer) tracks
// and therefore accepts.
var poolerParams = map[string]bool{
	"user": true, "database": true, "client_encoding": true, "datestyle": true,
	"timezone": true, "standard_conforming_strings": true, "application_name": true,
}

// clientError is an ErrorResponse the proxy sends before hanging up.
type clientError = pgfront.Error

func errorResponse(code, msg string) *pgproto3.ErrorResponse {
	// Neon's proxy reports its own errors with severity ERROR (psql prints
	// "ERROR: ..."). Their SQLSTATE is undocumented (docs/neon-api.md §12):
	// the codes used here are guesses, XX000 where nothing fits better.
	return &pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: code, Message: msg}
}

func (s *Server) acceptCompute() {
	for {
		c, err := s.pgLn.Accept()
		if err != nil {
			if s.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			s.log.Warn("neon fake: compute accept", "err", err)
			s.sleepUntil(time.Now().Add(10 * time.Millisecond))
			continue
		}
		s.mu.Lock()
		if s.mu.closed {
			s.mu.Unlock()
			_ = c.Close()
			continue
		}
		s.mu.conns[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Go(func() { s.serveCompute(c) })
	}
}

// serveCompute handles one client connection and always closes it.
func (s *Server) serveCompute(c net.Conn) {
	defer func() {
		s.mu.Lock()
		delete(s.mu.conns, c)
		s.mu.Unlock()
		_ = c.Close()
	}()
	log := s.log.With("remote", c.RemoteAddr().String())
	err := s.computeConn(c, log)
	var ce *clientError
	switch {
	case errors.As(err, &ce):
		_ = writeMsgs(c, errorResponse(ce.Code, ce.Msg)) // plain: only before TLS
		log.Debug("compute connection refused", "err", err)
	case err != nil:
		log.Debug("compute connection ended", "err", err)
	}
}

// computeConn runs the startup phase on raw; errors that must reach the
// client over TLS are sent here, a *clientError returned before TLS is
// sent by the caller.
func (s *Server) computeConn(raw net.Conn, log *slog.Logger) error {
	ctx, cancel := context.WithTimeout(s.ctx, handshakeTimeout)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { _ = raw.SetDeadline(time.Now()) }) // unblocks reads on Close
	defer stop()

	var first [1]byte
	if _, err := io.ReadFull(raw, first[:]); err != nil {
		return err
	}
	var (
		r  io.Reader = io.MultiReader(bytes.NewReader(first[:]), raw)
		tc *tls.Conn
	)
	if first[0] == 0x16 { // a TLS handshake record: direct TLS (PostgreSQL 17 sslnegotiation=direct)
		tc = tls.Server(&prefixConn{Conn: raw, prefix: first[:]}, s.tlsCfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			return err
		}
		if tc.ConnectionState().NegotiatedProtocol != "postgresql" {
			return errors.New("direct TLS without ALPN postgresql")
		}
		r = tc
	}
	for {
		pkt, err := pgfront.ReadStartupPacket(r)
		var ce *clientError
		if tc != nil && errors.As(err, &ce) {
			return sendErr(tc, ce.Code, ce.Msg)
		}
		if err != nil {
			return err
		}
		code := binary.BigEndian.Uint32(pkt)
		switch {
		case code == pgfront.SSLRequestCode && tc == nil:
			if _, err := raw.Write([]byte{'S'}); err != nil {
				return err
			}
			tc = tls.Server(raw, s.tlsCfg)
			if err := tc.HandshakeContext(ctx); err != nil {
				return err
			}
			r = tc
		case code == pgfront.GSSEncRequestCode && tc == nil:
			if _, err := raw.Write([]byte{'N'}); err != nil {
				return err
			}
		case code == pgfront.CancelRequestCode:
			s.forwardCancel(ctx, pkt, log)
			return nil
		case code>>16 == 3:
			return s.computeStartup(ctx, stop, raw, tc, pkt, log)
		default:
			msg := fmt.Sprintf("unsupported frontend protocol %d.%d: server supports 3.0 to 3.2", code>>16, code&0xffff)
			if tc != nil {
				return sendErr(tc, "0A000", msg)
			}
			return &clientError{Code: "0A000", Msg: msg}
		}
	}
}

func (s *Server) forwardCancel(ctx context.Context, pkt []byte, log *slog.Logger) {
	if s.backend == nil {
		return
	}
	full := binary.BigEndian.AppendUint32(nil, uint32(len(pkt)+4))
	if err := s.backend.cancel(ctx, append(full, pkt...)); err != nil {
		log.Debug("neon fake: forward cancel request", "err", err)
	}
}

// computeStartup handles a StartupMessage (pkt, without its length word).
// endHandshake stops the handshake deadline's enforcement (see
// computeConn) before the session starts relaying.
func (s *Server) computeStartup(ctx context.Context, endHandshake func() bool, raw net.Conn, tc *tls.Conn, pkt []byte, log *slog.Logger) error {
	minor := binary.BigEndian.Uint32(pkt) & 0xffff
	if tc == nil {
		return &clientError{Code: "08P01", Msg: msgInsecure}
	}
	// Decode as 3.2 whatever minor the client asked for; it is told 3.0
	// below (NegotiateProtocolVersion) if it asked for more.
	patched := slices.Clone(pkt)
	binary.BigEndian.PutUint32(patched, pgproto3.ProtocolVersion32)
	var sm pgproto3.StartupMessage
	if err := sm.Decode(patched); err != nil {
		return sendErr(tc, "08P01", "invalid startup packet layout: "+err.Error())
	}
	params := sm.Parameters
	tgt, cerr := resolveTarget(tc.ConnectionState().ServerName, params["options"])
	if cerr != nil {
		return sendErr(tc, cerr.Code, cerr.Msg)
	}
	user := params["user"]
	if user == "" {
		return sendErr(tc, "28000", "no PostgreSQL user name specified in startup packet")
	}
	dbName := params["database"]
	if dbName == "" {
		dbName = user
	}
	if tgt.pooler {
		if cerr := checkPoolerParams(params, tgt.rest); cerr != nil {
			return sendErr(tc, cerr.Code, cerr.Msg)
		}
	}
	log = log.With("endpoint", tgt.id, "pooler", tgt.pooler, "user", user)

	// The endpoint: wait while its compute starts (start_compute), as
	// Neon's proxy waits for a waking compute.
	var (
		creds    scram.StoredCredentials
		haveRole bool
	)
	err := s.waitFor(ctx, func() bool {
		ep := s.mu.endpoints[tgt.id]
		switch {
		case ep == nil || ep.deleted:
			cerr = &clientError{Code: "XX000", Msg: msgNoEndpoint}
		case ep.state == EndpointInit && ep.starting:
			return false
		case ep.state == EndpointInit:
			cerr = &clientError{Code: "XX000", Msg: msgCouldNotConnect + ": compute failed to start"}
		default:
			if r := ep.b.role(user); r != nil {
				creds, haveRole = r.creds, true
			}
		}
		return true
	})
	if err != nil {
		return sendErr(tc, "XX000", msgCouldNotConnect+": timed out waiting for the compute to start")
	}
	if cerr != nil {
		return sendErr(tc, cerr.Code, cerr.Msg)
	}
	if !haveRole { // authenticate against nothing, as Postgres does for unknown roles
		if creds, err = scramCreds(newPassword()); err != nil {
			return err
		}
	}

	var negotiate []string
	for _, k := range sortedKeys(params) {
		if strings.HasPrefix(k, "_pq_.") {
			negotiate = append(negotiate, k)
		}
	}
	if minor > 0 || len(negotiate) > 0 {
		if err := writeMsgs(tc, &pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 0, UnrecognizedOptions: negotiate}); err != nil {
			return err
		}
	}
	if ok, err := s.authenticate(tc, creds); err != nil || !ok {
		if err == nil {
			err = sendErr(tc, "28P01", fmt.Sprintf("password authentication failed for user '%s'", user))
		}
		return err
	}

	// Authenticated: log in to the branch's database.
	var (
		ep        *endpoint
		localDB   string
		localRole string
	)
	s.mu.Lock()
	ep = s.mu.endpoints[tgt.id]
	switch {
	case ep == nil || ep.deleted:
		cerr = &clientError{Code: "XX000", Msg: msgNoEndpoint}
	case ep.b.database(dbName) == nil:
		cerr = &clientError{Code: "3D000", Msg: fmt.Sprintf("database \"%s\" does not exist", dbName)}
	case ep.b.role(user) == nil:
		cerr = &clientError{Code: "28P01", Msg: fmt.Sprintf("password authentication failed for user '%s'", user)}
	default:
		localDB, localRole = localName(ep.b.id, dbName), localName(ep.b.id, user)
	}
	readOnly := ep != nil && ep.typ == "read_only"
	s.mu.Unlock()
	if cerr != nil {
		return sendErr(tc, cerr.Code, cerr.Msg)
	}
	if s.backend == nil {
		return sendErr(tc, "XX000", msgCouldNotConnect+": the fake has no Postgres backend")
	}
	run := map[string]string{}
	for k, v := range params {
		switch {
		case k == "user", k == "database", k == "options", strings.HasPrefix(k, "_pq_."):
		default:
			run[k] = v
		}
	}
	if tgt.rest != "" {
		run["options"] = tgt.rest
	}
	if readOnly {
		run["default_transaction_read_only"] = "on"
	}
	pc, err := s.backend.connect(ctx, localDB, localRole, run)
	if err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) {
			return writeMsgs(tc, unmapError(pe, map[string]string{localDB: dbName, localRole: user}))
		}
		log.Warn("neon fake: connect to the backend", "err", err)
		return sendErr(tc, "XX000", msgCouldNotConnect)
	}
	if err := pc.SyncConn(ctx); err != nil {
		_ = pc.Close(context.Background())
		return sendErr(tc, "XX000", msgCouldNotConnect)
	}
	hc, err := pc.Hijack()
	if err != nil {
		_ = pc.Close(context.Background())
		return err
	}
	server := hc.Conn
	defer server.Close()

	sess := &session{client: raw, server: server}
	s.mu.Lock()
	ep = s.mu.endpoints[tgt.id]
	if ep == nil || ep.deleted || s.mu.closed {
		s.mu.Unlock()
		return sendErr(tc, "XX000", msgNoEndpoint)
	}
	now := s.nowLocked()
	ep.refreshLocked(now)
	if ep.state != EndpointActive { // wake an idle compute
		ep.state, ep.startedAt, ep.suspendedAt = EndpointActive, now, time.Time{}
		ep.updatedAt = now
	}
	ep.lastActive = now
	ep.sessions[sess] = struct{}{}
	s.mu.sessions++
	s.notifyLocked()
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(ep.sessions, sess)
		s.mu.sessions--
		ep.lastActive = s.nowLocked()
		s.notifyLocked()
		s.mu.Unlock()
	}()

	msgs := make([]pgproto3.BackendMessage, 0, len(hc.ParameterStatuses)+2)
	for _, k := range sortedKeys(hc.ParameterStatuses) {
		v := hc.ParameterStatuses[k]
		if k == "session_authorization" {
			v = user
		}
		msgs = append(msgs, &pgproto3.ParameterStatus{Name: k, Value: v})
	}
	msgs = append(msgs, &pgproto3.BackendKeyData{ProcessID: hc.PID, SecretKey: hc.SecretKey}, &pgproto3.ReadyForQuery{TxStatus: 'I'})
	if err := writeMsgs(tc, msgs...); err != nil {
		return err
	}
	if !endHandshake() { // the handshake deadline (or Close) won the race
		return ctx.Err()
	}
	_ = raw.SetDeadline(time.Time{})
	_ = server.SetDeadline(time.Time{})
	log.Debug("compute session started", "database", dbName)

	return pgfront.Relay(tc, server, raw, server)
}

// authenticate runs SCRAM-SHA-256 (or -PLUS, bound to the proxy's
// certificate) with the client. It reports false if the proof was wrong;
// it sends SASLFinal and AuthenticationOk on success.
func (s *Server) authenticate(tc *tls.Conn, creds scram.StoredCredentials) (bool, error) {
	srv, err := scram.SHA256.NewServer(func(string) (scram.StoredCredentials, error) { return creds, nil })
	if err != nil {
		return false, err
	}
	conv := srv.NewConversationWithChannelBinding(scram.ChannelBinding{Type: scram.ChannelBindingTLSServerEndpoint, Data: s.certs.endPoint})
	if err := writeMsgs(tc, &pgproto3.AuthenticationSASL{AuthMechanisms: []string{"SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"}}); err != nil {
		return false, err
	}
	body, err := readMessage(tc, 'p')
	if err != nil {
		return false, err
	}
	var initial pgproto3.SASLInitialResponse
	if err := initial.Decode(body); err != nil {
		return false, sendErr(tc, "08P01", "malformed SASLInitialResponse")
	}
	plus := strings.HasPrefix(string(initial.Data), "p=")
	switch {
	case initial.AuthMechanism == "SCRAM-SHA-256-PLUS" && !plus,
		initial.AuthMechanism == "SCRAM-SHA-256" && plus:
		return false, sendErr(tc, "08P01", "SCRAM channel binding negotiation error")
	case initial.AuthMechanism != "SCRAM-SHA-256-PLUS" && initial.AuthMechanism != "SCRAM-SHA-256":
		return false, sendErr(tc, "08P01", "client selected an invalid SASL authentication mechanism")
	}
	first, err := conv.Step(string(initial.Data))
	if err != nil {
		return false, sendErr(tc, "08P01", "invalid SCRAM exchange: "+err.Error())
	}
	if err := writeMsgs(tc, &pgproto3.AuthenticationSASLContinue{Data: []byte(first)}); err != nil {
		return false, err
	}
	if body, err = readMessage(tc, 'p'); err != nil {
		return false, err
	}
	var resp pgproto3.SASLResponse
	if err := resp.Decode(body); err != nil {
		return false, sendErr(tc, "08P01", "malformed SASLResponse")
	}
	final, err := conv.Step(string(resp.Data))
	if err != nil || !conv.Valid() {
		return false, nil
	}
	return true, writeMsgs(tc, &pgproto3.AuthenticationSASLFinal{Data: []byte(final)}, &pgproto3.AuthenticationOk{})
}

// readMessage reads one regular message of type want and returns its body.
func readMessage(r io.Reader, want byte) ([]byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	if hdr[0] != want {
		return nil, fmt.Errorf("expected message %q, got %q", want, hdr[0])
	}
	n := int64(int32(binary.BigEndian.Uint32(hdr[1:])))
	if n < 4 || n-4 > maxSASLMessage {
		return nil, fmt.Errorf("invalid message length %d", n)
	}
	body := make([]byte, n-4)
	_, err := io.ReadFull(r, body)
	return body, err
}

// target is the endpoint a client asked for.
type target struct {
	id     string // endpoint id
	pooler bool   // the -pooler host
	rest   string // options left after removing endpoint=/project=
}

// resolveTarget finds the endpoint from the SNI host name's first label
// (when it is a Neon host) or from options=endpoint=<id> (or the older
// project=<id>), as Neon's proxy does.
func resolveTarget(sni, options string) (target, *clientError) {
	label := sniLabel(sni)
	rest, opt := splitOptions(options)
	switch {
	case label != "" && opt != "" && label != opt:
		return target{}, &clientError{Code: "XX000", Msg: fmt.Sprintf("Inconsistent project name inferred from SNI ('%s') and project option ('%s')", label, opt)}
	case label == "" && opt == "":
		return target{}, &clientError{Code: "XX000", Msg: msgMissingEndpoint}
	}
	id := label
	if id == "" {
		id = opt
	}
	t := target{id: id, rest: rest}
	if base, ok := strings.CutSuffix(id, "-pooler"); ok {
		t.id, t.pooler = base, true
	}
	return t, nil
}

// sniLabel returns the first label of sni if sni is under a Neon region
// domain, else "".
func sniLabel(sni string) string {
	sni = strings.ToLower(strings.TrimSuffix(sni, "."))
	for _, r := range regions {
		if strings.HasSuffix(sni, "."+regionDomain(r)) {
			label, _, _ := strings.Cut(sni, ".")
			return label
		}
	}
	return ""
}

// splitOptions takes endpoint=<id> and project=<id> out of a startup
// options string (libpq quoting: backslash escapes), returning the rest
// (re-quoted) and the id.
func splitOptions(options string) (rest, id string) {
	var keep []string
	for _, tok := range optionTokens(options) {
		if v, ok := strings.CutPrefix(tok, "endpoint="); ok {
			id = v
			continue
		}
		if v, ok := strings.CutPrefix(tok, "project="); ok {
			id = v
			continue
		}
		keep = append(keep, strings.NewReplacer(`\`, `\\`, " ", `\ `).Replace(tok))
	}
	return strings.Join(keep, " "), id
}

func optionTokens(s string) []string {
	var (
		toks []string
		cur  strings.Builder
		esc  bool
	)
	flush := func() {
		if cur.Len() > 0 {
			toks = append(toks, cur.String())
			cur.Reset()
		}
	}
	for _, c := range s {
		switch {
		case esc:
			cur.WriteRune(c)
			esc = false
		case c == '\\':
			esc = true
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			flush()
		default:
			cur.WriteRune(c)
		}
	}
	flush()
	return toks
}

// checkPoolerParams refuses the startup parameters Neon's pooler does not
// track.
func checkPoolerParams(params map[string]string, restOptions string) *clientError {
	for _, k := range sortedKeys(params) {
		lk := strings.ToLower(k)
		switch {
		case poolerParams[lk], strings.HasPrefix(k, "_pq_."):
		case lk == "options":
			if toks := optionTokens(restOptions); len(toks) > 0 {
				return &clientError{Code: "08P01", Msg: "unsupported startup parameter in options: " + toks[0]}
			}
		default:
			return &clientError{Code: "08P01", Msg: "unsupported startup parameter: " + k}
		}
	}
	return nil
}

// unmapError turns a local server's error into the client's, with local
// object names replaced by the Neon ones.
func unmapError(pe *pgconn.PgError, names map[string]string) *pgproto3.ErrorResponse {
	fix := func(s string) string {
		for local, neon := range names {
			s = strings.ReplaceAll(s, local, neon)
		}
		return s
	}
	return &pgproto3.ErrorResponse{
		Severity: pe.Severity, SeverityUnlocalized: pe.SeverityUnlocalized, Code: pe.Code,
		Message: fix(pe.Message), Detail: fix(pe.Detail), Hint: fix(pe.Hint),
	}
}

// sendErr sends an ErrorResponse and returns the error for the log.
func sendErr(w io.Writer, code, msg string) error {
	if err := writeMsgs(w, errorResponse(code, msg)); err != nil {
		return err
	}
	return &sentError{code: code, msg: msg}
}

// sentError is a refusal already reported to the client.
type sentError struct{ code, msg string }

func (e *sentError) Error() string { return "refused: " + e.code + ": " + e.msg }

// writeMsgs encodes msgs into one buffer and writes it with one call.
func writeMsgs(w io.Writer, msgs ...pgproto3.BackendMessage) error {
	var (
		buf []byte
		err error
	)
	for _, m := range msgs {
		if buf, err = m.Encode(buf); err != nil {
			return err
		}
	}
	_, err = w.Write(buf)
	return err
}

// prefixConn is a net.Conn whose first reads return prefix.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(b []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(b, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}
