package rdstest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/xml"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
)

const apiVersion = "2014-10-31"

const xmlns = "http://rds.amazonaws.com/doc/2014-10-31/"

// apiError is a fault as the Query API answers it (docs/aws-rds-api.md §5).
type apiError struct {
	status      int
	code, msg   string
	typ         string // Sender or Receiver
	performLost bool
}

func (e *apiError) Error() string { return e.code + ": " + e.msg }

func fault(status int, code, format string, args ...any) *apiError {
	return &apiError{status: status, code: code, msg: fmt.Sprintf(format, args...), typ: "Sender"}
}

func invalid(format string, args ...any) *apiError {
	return fault(400, "InvalidParameterValue", format, args...)
}

func requestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

type xmlError struct {
	XMLName xml.Name `xml:"ErrorResponse"`
	Xmlns   string   `xml:"xmlns,attr"`
	Error   struct {
		Type    string `xml:"Type"`
		Code    string `xml:"Code"`
		Message string `xml:"Message"`
	} `xml:"Error"`
	RequestID string `xml:"RequestId"`
}

func writeXML(w http.ResponseWriter, status int, v any, id string) {
	b, err := xml.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/xml")
	w.Header().Set("X-Amzn-Requestid", id)
	w.WriteHeader(status)
	_, _ = w.Write([]byte(xml.Header))
	_, _ = w.Write(b)
}

func writeError(w http.ResponseWriter, e *apiError) {
	var x xmlError
	x.Xmlns = xmlns
	x.Error.Type, x.Error.Code, x.Error.Message = e.typ, e.code, e.msg
	x.RequestID = requestID()
	writeXML(w, e.status, x, x.RequestID)
}

// response wraps a result as <ActionResponse><ActionResult>...; the
// SDK reads the result element by the action's name.
func response(action, id string, result any) any {
	type meta struct {
		RequestID string `xml:"RequestId"`
	}
	type resp struct {
		XMLName  xml.Name
		Xmlns    string `xml:"xmlns,attr"`
		Result   named
		Metadata meta `xml:"ResponseMetadata"`
	}
	return resp{XMLName: xml.Name{Local: action + "Response"}, Xmlns: xmlns, Result: named{action + "Result", result}, Metadata: meta{RequestID: id}}
}

// named encodes v as an element called name.
type named struct {
	name string
	v    any
}

func (n named) MarshalXML(e *xml.Encoder, start xml.StartElement) error {
	start.Name = xml.Name{Local: n.name}
	return e.EncodeElement(n.v, start)
}

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		writeError(w, fault(400, "InvalidAction", "the Query API takes POST requests"))
		return
	}
	if err := r.ParseForm(); err != nil {
		writeError(w, fault(400, "MalformedQueryString", "%v", err))
		return
	}
	action := r.PostForm.Get("Action")
	log := s.log.With("action", action)
	if e := s.checkAuth(r); e != nil {
		log.Info("rdstest: refused", "code", e.code)
		writeError(w, e)
		return
	}
	if v := r.PostForm.Get("Version"); v != apiVersion {
		writeError(w, fault(400, "InvalidParameterValue", "unsupported API version %q (want %s)", v, apiVersion))
		return
	}
	s.mu.Lock()
	s.mu.requests++
	throttled := s.cfg.ThrottleEvery > 0 && s.mu.requests%s.cfg.ThrottleEvery == 0
	s.mu.Unlock()
	if throttled {
		log.Info("rdstest: throttled")
		writeError(w, fault(400, "Throttling", "Rate exceeded"))
		return
	}
	var (
		result any
		e      *apiError
		lost   bool
	)
	f := r.PostForm
	switch action {
	case "CreateDBCluster":
		result, lost, e = s.createDBCluster(r.Context(), f)
	case "CreateDBInstance":
		result, lost, e = s.createDBInstance(r.Context(), f)
	case "DescribeDBClusters":
		result, e = s.describeDBClusters(f)
	case "DescribeDBInstances":
		result, e = s.describeDBInstances(f)
	case "DeleteDBCluster":
		result, e = s.deleteDBCluster(r.Context(), f)
	case "DeleteDBInstance":
		result, e = s.deleteDBInstance(r.Context(), f)
	default:
		e = fault(400, "InvalidAction", "the fake does not implement %q", action)
	}
	if e != nil {
		log.Info("rdstest: fault", "code", e.code, "msg", e.msg)
		writeError(w, e)
		return
	}
	if lost {
		log.Info("rdstest: response lost")
		if hj, ok := w.(http.Hijacker); ok {
			if c, _, err := hj.Hijack(); err == nil {
				_ = c.Close()
				return
			}
		}
		panic(http.ErrAbortHandler) // drops the connection without an answer
	}
	log.Debug("rdstest: ok")
	id := requestID()
	writeXML(w, http.StatusOK, response(action, id, result), id)
}

// checkAuth wants a SigV4 Authorization header (the signature itself is
// not checked) and, when configured, the one access key.
func (s *Server) checkAuth(r *http.Request) *apiError {
	h := r.Header.Get("Authorization")
	rest, ok := strings.CutPrefix(h, "AWS4-HMAC-SHA256 ")
	if !ok {
		return fault(403, "MissingAuthenticationToken", "Request is missing Authentication Token")
	}
	_, cred, ok := strings.Cut(rest, "Credential=")
	if !ok {
		return fault(403, "IncompleteSignature", "Authorization header has no Credential")
	}
	key, _, _ := strings.Cut(cred, "/")
	if s.cfg.AccessKeyID != "" && key != s.cfg.AccessKeyID {
		return fault(403, "InvalidClientTokenId", "The security token included in the request is invalid.")
	}
	return nil
}

// Identifier rules (docs/aws-rds-api.md §2): 1 to 63 letters, digits or
// hyphens, a letter first, no trailing hyphen, no two hyphens in a row.
var identRE = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9-]{0,62}$`)

func checkIdentifier(param, id string) *apiError {
	if id == "" {
		return fault(400, "MissingParameter", "The request must contain the parameter %s", param)
	}
	if !identRE.MatchString(id) || strings.HasSuffix(id, "-") || strings.Contains(id, "--") {
		return invalid("The parameter %s is not a valid identifier. Identifiers must begin with a letter; must contain only ASCII letters, digits, and hyphens; and must not end with a hyphen or contain two consecutive hyphens.", param)
	}
	return nil
}

// checkPassword: printable ASCII without / " @ and spaces, 8 to max chars.
func checkPassword(pw string, maxLen int) *apiError {
	if pw == "" {
		return fault(400, "MissingParameter", "The request must contain the parameter MasterUserPassword")
	}
	if len(pw) < 8 || len(pw) > maxLen {
		return invalid("The parameter MasterUserPassword is not a valid password because it is shorter than 8 characters or longer than %d.", maxLen)
	}
	for _, c := range pw {
		if c <= ' ' || c > '~' || c == '/' || c == '"' || c == '@' {
			return invalid("The parameter MasterUserPassword is not a valid password. Only printable ASCII characters besides '/', '@', '\"', ' ' may be used.")
		}
	}
	return nil
}

var userRE = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9_]{0,15}$`)
var dbNameRE = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9_]{0,62}$`)

func tags(f map[string][]string) [][2]string {
	var out [][2]string
	for i := 1; ; i++ {
		k := first(f, "Tags.Tag."+strconv.Itoa(i)+".Key")
		if k == "" {
			return out
		}
		out = append(out, [2]string{k, first(f, "Tags.Tag."+strconv.Itoa(i)+".Value")})
	}
}

func first(f map[string][]string, key string) string {
	if v := f[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// takeLostLocked says whether the answer to this create must be lost.
func (s *Server) takeLostLocked(id string) bool {
	if s.mu.lose[id] {
		delete(s.mu.lose, id)
		return true
	}
	return false
}

func (s *Server) createDBCluster(ctx context.Context, f map[string][]string) (any, bool, *apiError) {
	id := first(f, "DBClusterIdentifier")
	if e := checkIdentifier("DBClusterIdentifier", id); e != nil {
		return nil, false, e
	}
	id = strings.ToLower(id)
	c := &cluster{id: id, engine: first(f, "Engine"), version: first(f, "EngineVersion"),
		user: first(f, "MasterUsername"), dbname: first(f, "DatabaseName"), tags: tags(f)}
	if c.engine != "aurora-postgresql" {
		return nil, false, invalid("Invalid DB engine %q: the fake serves aurora-postgresql clusters only", c.engine)
	}
	if c.version == "" {
		c.version = "16.6"
	}
	if !userRE.MatchString(c.user) {
		return nil, false, invalid("The parameter MasterUsername is not a valid identifier (1 to 16 letters, digits or underscores, a letter first).")
	}
	pw := first(f, "MasterUserPassword")
	if e := checkPassword(pw, 41); e != nil {
		return nil, false, e
	}
	if c.dbname == "" {
		c.dbname = "postgres"
	} else if !dbNameRE.MatchString(c.dbname) {
		return nil, false, invalid("DatabaseName must begin with a letter and contain only alphanumeric characters or underscores.")
	}
	if v := first(f, "ServerlessV2ScalingConfiguration.MinCapacity"); v != "" {
		c.scaling.configured = true
		c.scaling.min, _ = strconv.ParseFloat(v, 64)
		c.scaling.max, _ = strconv.ParseFloat(first(f, "ServerlessV2ScalingConfiguration.MaxCapacity"), 64)
		c.scaling.autoPause, _ = strconv.Atoi(first(f, "ServerlessV2ScalingConfiguration.SecondsUntilAutoPause"))
		if c.scaling.min < 0 || c.scaling.max > 256 || c.scaling.max < c.scaling.min || c.scaling.max < 1 {
			return nil, false, fault(400, "InvalidParameterCombination", "ServerlessV2ScalingConfiguration: MinCapacity %v and MaxCapacity %v must satisfy 0 <= min <= max <= 256, max >= 1", c.scaling.min, c.scaling.max)
		}
		if c.scaling.autoPause != 0 && (c.scaling.autoPause < 300 || c.scaling.autoPause > 86400) {
			return nil, false, invalid("SecondsUntilAutoPause must be between 300 and 86400")
		}
	}
	c.local = newLocalNames("aurora", id, c.user, c.dbname)

	now := s.now()
	s.mu.Lock()
	s.expireLocked(now)
	if _, ok := s.mu.clusters[id]; ok {
		s.mu.Unlock()
		return nil, false, fault(400, "DBClusterAlreadyExistsFault", "DB Cluster already exists")
	}
	c.lifecycle = s.newLifecycle(now)
	s.mu.clusters[id] = c // reserved before the I/O, so a concurrent create sees it
	lost := s.takeLostLocked(id)
	x := s.xmlClusterLocked(c, now)
	s.mu.Unlock()

	if err := s.createBacking(ctx, c.local, pw); err != nil {
		s.mu.Lock()
		delete(s.mu.clusters, id)
		s.mu.Unlock()
		return nil, false, &apiError{status: 500, code: "InternalFailure", msg: err.Error(), typ: "Receiver"}
	}
	return struct {
		DBCluster xmlCluster `xml:"DBCluster"`
	}{x}, lost, nil
}

func (s *Server) createDBInstance(ctx context.Context, f map[string][]string) (any, bool, *apiError) {
	id := first(f, "DBInstanceIdentifier")
	if e := checkIdentifier("DBInstanceIdentifier", id); e != nil {
		return nil, false, e
	}
	id = strings.ToLower(id)
	in := &instance{id: id, class: first(f, "DBInstanceClass"), engine: first(f, "Engine"), version: first(f, "EngineVersion"),
		cluster: strings.ToLower(first(f, "DBClusterIdentifier")), tags: tags(f)}
	if in.class == "" {
		return nil, false, fault(400, "MissingParameter", "The request must contain the parameter DBInstanceClass")
	}
	var pw string
	now := s.now()
	if in.cluster != "" {
		if in.engine != "aurora-postgresql" {
			return nil, false, invalid("The engine of an instance in a DB cluster must be the cluster's (aurora-postgresql)")
		}
		if first(f, "MasterUserPassword") != "" || first(f, "MasterUsername") != "" {
			return nil, false, fault(400, "InvalidParameterCombination", "The requested DB Instance will be a member of a DB Cluster. Set master user name and password for the DB Cluster.")
		}
		s.mu.Lock()
		s.expireLocked(now)
		c, ok := s.mu.clusters[in.cluster]
		s.mu.Unlock()
		if !ok || c.deleting() {
			return nil, false, fault(404, "DBClusterNotFoundFault", "DBCluster %s not found.", in.cluster)
		}
		if in.class == "db.serverless" && !c.scaling.configured {
			return nil, false, fault(400, "InvalidParameterCombination", "Set the Serverless v2 scaling configuration on the parent DB cluster before creating a Serverless v2 DB instance.")
		}
		in.version, in.user, in.dbname = c.version, c.user, c.dbname
	} else {
		if in.engine != "postgres" {
			return nil, false, invalid("Invalid DB engine %q: the fake serves postgres instances and aurora-postgresql clusters", in.engine)
		}
		if in.class == "db.serverless" {
			return nil, false, fault(400, "InvalidParameterCombination", "db.serverless instances must belong to an Aurora DB cluster")
		}
		if in.version == "" {
			in.version = "17.2"
		}
		in.user, in.dbname = first(f, "MasterUsername"), first(f, "DBName")
		if !userRE.MatchString(in.user) {
			return nil, false, invalid("The parameter MasterUsername is not a valid identifier (1 to 16 letters, digits or underscores, a letter first).")
		}
		pw = first(f, "MasterUserPassword")
		if e := checkPassword(pw, 128); e != nil {
			return nil, false, e
		}
		var err error
		if in.storage, err = strconv.Atoi(first(f, "AllocatedStorage")); err != nil || in.storage < 20 || in.storage > 65536 {
			return nil, false, invalid("Invalid storage size for engine name postgres and storage type gp2: %s", first(f, "AllocatedStorage"))
		}
		if in.dbname == "" {
			in.dbname = "postgres"
		} else if !dbNameRE.MatchString(in.dbname) {
			return nil, false, invalid("DBName must begin with a letter and contain only alphanumeric characters or underscores.")
		}
		in.local = newLocalNames("rds", id, in.user, in.dbname)
	}

	s.mu.Lock()
	s.expireLocked(now)
	if _, ok := s.mu.instances[id]; ok {
		s.mu.Unlock()
		return nil, false, fault(400, "DBInstanceAlreadyExists", "DB instance already exists")
	}
	in.lifecycle = s.newLifecycle(now)
	s.mu.instances[id] = in
	lost := s.takeLostLocked(id)
	x := s.xmlInstance(in, now)
	s.mu.Unlock()

	if in.cluster == "" {
		if err := s.createBacking(ctx, in.local, pw); err != nil {
			s.mu.Lock()
			delete(s.mu.instances, id)
			s.mu.Unlock()
			return nil, false, &apiError{status: 500, code: "InternalFailure", msg: err.Error(), typ: "Receiver"}
		}
	}
	return struct {
		DBInstance xmlInstance `xml:"DBInstance"`
	}{x}, lost, nil
}

func (s *Server) describeDBClusters(f map[string][]string) (any, *apiError) {
	id := strings.ToLower(first(f, "DBClusterIdentifier"))
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expireLocked(now)
	var out []xmlCluster
	if id != "" {
		c, ok := s.mu.clusters[id]
		if !ok {
			return nil, fault(404, "DBClusterNotFoundFault", "DBCluster %s not found.", id)
		}
		out = append(out, s.xmlClusterLocked(c, now))
	} else {
		for _, c := range s.mu.clusters {
			out = append(out, s.xmlClusterLocked(c, now))
		}
	}
	return struct {
		DBClusters []xmlCluster `xml:"DBClusters>DBCluster"`
	}{out}, nil
}

func (s *Server) describeDBInstances(f map[string][]string) (any, *apiError) {
	id := strings.ToLower(first(f, "DBInstanceIdentifier"))
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expireLocked(now)
	var out []xmlInstance
	if id != "" {
		in, ok := s.mu.instances[id]
		if !ok {
			return nil, fault(404, "DBInstanceNotFound", "DBInstance %s not found.", id)
		}
		out = append(out, s.xmlInstance(in, now))
	} else {
		for _, in := range s.mu.instances {
			out = append(out, s.xmlInstance(in, now))
		}
	}
	return struct {
		DBInstances []xmlInstance `xml:"DBInstances>DBInstance"`
	}{out}, nil
}

// finalSnapshot applies the SkipFinalSnapshot rule (docs/aws-rds-api.md §3.3).
func finalSnapshot(f map[string][]string, idParam string) (string, *apiError) {
	skip := first(f, "SkipFinalSnapshot") == "true"
	snap := first(f, idParam)
	switch {
	case skip && snap != "":
		return "", fault(400, "InvalidParameterCombination", "FinalDBSnapshotIdentifier can not be specified when deleting a DB with SkipFinalSnapshot enabled")
	case !skip && snap == "":
		return "", fault(400, "InvalidParameterCombination", "FinalDBSnapshotIdentifier is required unless SkipFinalSnapshot is specified.")
	case !skip:
		if e := checkIdentifier(idParam, snap); e != nil {
			return "", e
		}
	}
	return snap, nil
}

func (s *Server) deleteDBCluster(ctx context.Context, f map[string][]string) (any, *apiError) {
	id := strings.ToLower(first(f, "DBClusterIdentifier"))
	snap, e := finalSnapshot(f, "FinalDBSnapshotIdentifier")
	if e != nil {
		return nil, e
	}
	now := s.now()
	s.mu.Lock()
	s.expireLocked(now)
	c, ok := s.mu.clusters[id]
	if !ok {
		s.mu.Unlock()
		return nil, fault(404, "DBClusterNotFoundFault", "DBCluster %s not found.", id)
	}
	if c.deleting() {
		s.mu.Unlock()
		return nil, fault(400, "InvalidDBClusterStateFault", "DB cluster %s is already being deleted.", id)
	}
	if st := c.status(now); snap != "" && st != statusAvailable {
		s.mu.Unlock()
		return nil, fault(400, "InvalidDBClusterStateFault", "DB cluster %s is currently %s - a final snapshot cannot be taken.", id, st)
	}
	for _, in := range s.mu.instances {
		if in.cluster == id && !in.deleting() {
			s.mu.Unlock()
			return nil, fault(400, "InvalidDBClusterStateFault", "Cluster cannot be deleted, it still contains DB instances in non-deleting state.")
		}
	}
	c.deleteUntil = now.Add(delay(s.cfg.DeleteDelay, DefaultDeleteDelay))
	if snap != "" {
		s.mu.snapshots = append(s.mu.snapshots, snap)
	}
	x := s.xmlClusterLocked(c, now)
	s.mu.Unlock()
	if err := s.dropBacking(ctx, c.local); err != nil {
		return nil, &apiError{status: 500, code: "InternalFailure", msg: err.Error(), typ: "Receiver"}
	}
	return struct {
		DBCluster xmlCluster `xml:"DBCluster"`
	}{x}, nil
}

func (s *Server) deleteDBInstance(ctx context.Context, f map[string][]string) (any, *apiError) {
	id := strings.ToLower(first(f, "DBInstanceIdentifier"))
	now := s.now()
	s.mu.Lock()
	s.expireLocked(now)
	in, ok := s.mu.instances[id]
	s.mu.Unlock()
	if !ok {
		return nil, fault(404, "DBInstanceNotFound", "DBInstance %s not found.", id)
	}
	var snap string
	if in.cluster == "" { // Aurora members are backed up with their cluster
		var e *apiError
		if snap, e = finalSnapshot(f, "FinalDBSnapshotIdentifier"); e != nil {
			return nil, e
		}
	}
	s.mu.Lock()
	if in.deleting() {
		s.mu.Unlock()
		return nil, fault(400, "InvalidDBInstanceState", "Instance %s is already being deleted.", id)
	}
	if st := in.status(now); snap != "" && st != statusAvailable {
		s.mu.Unlock()
		return nil, fault(400, "InvalidDBInstanceState", "Instance %s is currently %s - a final snapshot cannot be taken.", id, st)
	}
	in.deleteUntil = now.Add(delay(s.cfg.DeleteDelay, DefaultDeleteDelay))
	if snap != "" {
		s.mu.snapshots = append(s.mu.snapshots, snap)
	}
	x := s.xmlInstance(in, now)
	s.mu.Unlock()
	if in.cluster == "" {
		if err := s.dropBacking(ctx, in.local); err != nil {
			return nil, &apiError{status: 500, code: "InternalFailure", msg: err.Error(), typ: "Receiver"}
		}
	}
	return struct {
		DBInstance xmlInstance `xml:"DBInstance"`
	}{x}, nil
}
