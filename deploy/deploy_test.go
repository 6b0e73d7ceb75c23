package deploy

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.yaml.in/yaml/v3"

	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/internal/poll"
	"github.com/pgtenant/pgtenant/router"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// stopMargin is what a stop timeout must leave after the drain: the pools
// and the admin listener close after drain_timeout ends the last sessions.
const stopMargin = 5 * time.Second

// ---- What the code says ----------------------------------------------

// serveFacts is what cmd/pgtenant's source says about `pgtenant serve`,
// read with go/parser so that nothing is copied into this test.
type serveFacts struct {
	drain   []string        // signals that end main's context: serve drains (signal.NotifyContext)
	reload  []string        // signals runServe reloads the config on (signal.Notify)
	flags   map[string]bool // flags of runServe's flag set
	vars    map[string]bool // package-level vars of package main (-ldflags -X main.<var>=)
	sdReady bool            // some non-test code sends sd_notify READY=1
}

func readServe(t *testing.T) serveFacts {
	t.Helper()
	f := serveFacts{flags: map[string]bool{}, vars: map[string]bool{}}
	fset := token.NewFileSet()
	files, err := filepath.Glob("../cmd/pgtenant/*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range files {
		if strings.HasSuffix(path, "_test.go") {
			continue
		}
		file, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range file.Decls {
			switch d := d.(type) {
			case *ast.GenDecl:
				if d.Tok != token.VAR {
					continue
				}
				for _, s := range d.Specs {
					for _, n := range s.(*ast.ValueSpec).Names {
						f.vars[n.Name] = true
					}
				}
			case *ast.FuncDecl:
				inServe := d.Name.Name == "runServe"
				ast.Inspect(d, func(n ast.Node) bool {
					call, ok := n.(*ast.CallExpr)
					if !ok {
						return true
					}
					pkg, fn := selector(call.Fun)
					switch {
					case pkg == "signal" && fn == "NotifyContext" && len(call.Args) > 1:
						f.drain = append(f.drain, signalNames(call.Args[1:])...)
					case pkg == "signal" && fn == "Notify" && inServe && len(call.Args) > 1:
						f.reload = append(f.reload, signalNames(call.Args[1:])...)
					case pkg == "fs" && inServe:
						// fs.String("config", ...), fs.StringVar(&v, "config", ...)
						for _, a := range call.Args[:min(2, len(call.Args))] {
							if lit, ok := a.(*ast.BasicLit); ok && lit.Kind == token.STRING {
								name, _ := strconv.Unquote(lit.Value)
								f.flags[name] = true
								break
							}
						}
					}
					return true
				})
			}
		}
	}
	if len(f.drain) == 0 || len(f.reload) == 0 || !f.flags["config"] {
		t.Fatalf("cmd/pgtenant: found drain signals %q, reload signals %q, flags %v: has the code moved?", f.drain, f.reload, f.flags)
	}
	// sd_notify: a service manager must not wait for a READY=1 that never
	// comes (Type=notify).
	err = filepath.WalkDir("..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && path != ".." && strings.HasPrefix(d.Name(), ".") {
			return filepath.SkipDir // .git, .pgtenant
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err == nil && strings.Contains(string(b), `"READY=1`) {
			f.sdReady = true
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func selector(e ast.Expr) (pkg, name string) {
	if s, ok := e.(*ast.SelectorExpr); ok {
		if id, ok := s.X.(*ast.Ident); ok {
			return id.Name, s.Sel.Name
		}
	}
	return "", ""
}

// signalNames names syscall.SIGTERM, os.Interrupt and os.Kill as kill(1)
// does.
func signalNames(args []ast.Expr) []string {
	var out []string
	for _, a := range args {
		switch pkg, name := selector(a); {
		case pkg == "syscall":
			out = append(out, name)
		case pkg == "os" && name == "Interrupt":
			out = append(out, "SIGINT")
		case pkg == "os" && name == "Kill":
			out = append(out, "SIGKILL")
		}
	}
	return out
}

// goDirective is go.mod's go version.
func goDirective(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "go "); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatal("go.mod has no go directive")
	return ""
}

// ---- Parsers ----------------------------------------------------------

// unit is a systemd unit file: section, then key, then its values in order.
type unit map[string]map[string][]string

func (u unit) get(section, key string) string {
	v := u[section][key]
	if len(v) == 0 {
		return ""
	}
	return v[len(v)-1] // a later assignment wins, as in systemd
}

// parseUnit reads a unit file as systemd does: [Section] headers,
// Key=Value lines, # and ; comments, and a trailing backslash continuing a
// line.
func parseUnit(r io.Reader) (unit, error) {
	u := unit{}
	section := ""
	sc := bufio.NewScanner(r)
	var cont string
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if cont != "" {
			line, cont = cont+" "+line, ""
		}
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		if l, ok := strings.CutSuffix(line, `\`); ok {
			cont = l
			continue
		}
		if line[0] == '[' && line[len(line)-1] == ']' {
			section = line[1 : len(line)-1]
			if u[section] == nil {
				u[section] = map[string][]string{}
			}
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || section == "" {
			return nil, fmt.Errorf("line %d: not Key=Value in a section: %q", n, line)
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		u[section][k] = append(u[section][k], v)
	}
	return u, sc.Err()
}

// parseTimeSpan reads a systemd time span: "45", "45s", "1min 30s".
func parseTimeSpan(s string) (time.Duration, error) {
	if s == "infinity" {
		return time.Duration(1<<63 - 1), nil
	}
	units := map[string]time.Duration{
		"": time.Second, "us": time.Microsecond, "usec": time.Microsecond, "ms": time.Millisecond, "msec": time.Millisecond,
		"s": time.Second, "sec": time.Second, "second": time.Second, "seconds": time.Second,
		"m": time.Minute, "min": time.Minute, "minute": time.Minute, "minutes": time.Minute,
		"h": time.Hour, "hr": time.Hour, "hour": time.Hour, "hours": time.Hour,
	}
	re := regexp.MustCompile(`^\s*(\d+)\s*([a-z]*)`)
	var d time.Duration
	rest := s
	for strings.TrimSpace(rest) != "" {
		m := re.FindStringSubmatch(rest)
		if m == nil {
			return 0, fmt.Errorf("time span %q: cannot read %q", s, rest)
		}
		u, ok := units[m[2]]
		if !ok {
			return 0, fmt.Errorf("time span %q: unknown unit %q", s, m[2])
		}
		n, _ := strconv.Atoi(m[1])
		d += time.Duration(n) * u
		rest = rest[len(m[0]):]
	}
	if s == "" {
		return 0, errors.New("empty time span")
	}
	return d, nil
}

// stage is one FROM of a Dockerfile and the instructions under it.
type stage struct {
	image, name string
	instrs      []instr
}

type instr struct{ cmd, args string }

func (s stage) all(cmd string) []string {
	var out []string
	for _, in := range s.instrs {
		if in.cmd == cmd {
			out = append(out, in.args)
		}
	}
	return out
}

func (s stage) last(cmd string) string {
	a := s.all(cmd)
	if len(a) == 0 {
		return ""
	}
	return a[len(a)-1]
}

// parseDockerfile splits a Dockerfile into stages: comment lines dropped,
// backslash continuations joined, instructions upper-cased.
func parseDockerfile(r io.Reader) ([]stage, error) {
	var stages []stage
	sc := bufio.NewScanner(r)
	var cur string
	flush := func() error {
		line := strings.TrimSpace(cur)
		cur = ""
		if line == "" {
			return nil
		}
		cmd, args, _ := strings.Cut(line, " ")
		cmd, args = strings.ToUpper(cmd), strings.TrimSpace(args)
		if cmd == "FROM" {
			f := strings.Fields(args)
			s := stage{image: f[0]}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				s.name = f[2]
			}
			stages = append(stages, s)
			return nil
		}
		if len(stages) == 0 {
			if cmd == "ARG" {
				return nil
			}
			return fmt.Errorf("%s before FROM", cmd)
		}
		stages[len(stages)-1].instrs = append(stages[len(stages)-1].instrs, instr{cmd, args})
		return nil
	}
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "#") {
			continue
		}
		if l, ok := strings.CutSuffix(line, `\`); ok {
			cur += l + " "
			continue
		}
		cur += line
		if err := flush(); err != nil {
			return nil, err
		}
	}
	if err := flush(); err != nil {
		return nil, err
	}
	return stages, sc.Err()
}

// k8s are the Kubernetes objects of deploy/kubernetes, decoded into the
// fields this test checks.
type k8s struct {
	configMap  configMap
	deployment deployment
	service    service
	pdb        pdb
}

type meta struct {
	Name   string            `yaml:"name"`
	Labels map[string]string `yaml:"labels"`
}

type labelSelector struct {
	MatchLabels map[string]string `yaml:"matchLabels"`
}

type configMap struct {
	Metadata meta              `yaml:"metadata"`
	Data     map[string]string `yaml:"data"`
}

type deployment struct {
	Metadata meta `yaml:"metadata"`
	Spec     struct {
		Replicas *int          `yaml:"replicas"`
		Selector labelSelector `yaml:"selector"`
		Template struct {
			Metadata meta    `yaml:"metadata"`
			Spec     podSpec `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

type podSpec struct {
	TerminationGracePeriodSeconds *int64          `yaml:"terminationGracePeriodSeconds"`
	SecurityContext               securityContext `yaml:"securityContext"`
	Containers                    []container     `yaml:"containers"`
	Volumes                       []struct {
		Name      string `yaml:"name"`
		ConfigMap *struct {
			Name string `yaml:"name"`
		} `yaml:"configMap"`
	} `yaml:"volumes"`
}

type securityContext struct {
	RunAsNonRoot             *bool  `yaml:"runAsNonRoot"`
	RunAsUser                *int64 `yaml:"runAsUser"`
	ReadOnlyRootFilesystem   *bool  `yaml:"readOnlyRootFilesystem"`
	AllowPrivilegeEscalation *bool  `yaml:"allowPrivilegeEscalation"`
}

type container struct {
	Name  string   `yaml:"name"`
	Image string   `yaml:"image"`
	Args  []string `yaml:"args"`
	Ports []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
	} `yaml:"ports"`
	Env []struct {
		Name      string `yaml:"name"`
		Value     string `yaml:"value"`
		ValueFrom *struct {
			SecretKeyRef *struct {
				Name     string `yaml:"name"`
				Key      string `yaml:"key"`
				Optional bool   `yaml:"optional"`
			} `yaml:"secretKeyRef"`
			FieldRef *struct {
				FieldPath string `yaml:"fieldPath"`
			} `yaml:"fieldRef"`
		} `yaml:"valueFrom"`
	} `yaml:"env"`
	ReadinessProbe *probe `yaml:"readinessProbe"`
	LivenessProbe  *probe `yaml:"livenessProbe"`
	Lifecycle      struct {
		PreStop *struct {
			Sleep *struct {
				Seconds int64 `yaml:"seconds"`
			} `yaml:"sleep"`
		} `yaml:"preStop"`
	} `yaml:"lifecycle"`
	Resources struct {
		Requests map[string]string `yaml:"requests"`
		Limits   map[string]string `yaml:"limits"`
	} `yaml:"resources"`
	SecurityContext securityContext `yaml:"securityContext"`
	VolumeMounts    []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
	} `yaml:"volumeMounts"`
}

type probe struct {
	HTTPGet *struct {
		Path string `yaml:"path"`
		Port any    `yaml:"port"` // a number or a container port's name
	} `yaml:"httpGet"`
}

type service struct {
	Metadata meta `yaml:"metadata"`
	Spec     struct {
		Selector map[string]string `yaml:"selector"`
		Ports    []struct {
			Name       string `yaml:"name"`
			Port       int    `yaml:"port"`
			TargetPort any    `yaml:"targetPort"`
		} `yaml:"ports"`
	} `yaml:"spec"`
}

type pdb struct {
	Metadata meta `yaml:"metadata"`
	Spec     struct {
		MinAvailable   any           `yaml:"minAvailable"`
		MaxUnavailable any           `yaml:"maxUnavailable"`
		Selector       labelSelector `yaml:"selector"`
	} `yaml:"spec"`
}

// readK8s decodes every document of every YAML file in dir (one file may
// hold several, separated by ---) and wants exactly one object of each
// kind the router needs.
func readK8s(t *testing.T, dir string) k8s {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var out k8s
	count := map[string]int{}
	for _, path := range files {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(f)
		for {
			var doc yaml.Node
			if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				f.Close()
				t.Fatalf("%s: %v", path, err)
			}
			var head struct {
				APIVersion string `yaml:"apiVersion"`
				Kind       string `yaml:"kind"`
			}
			if err := doc.Decode(&head); err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			var dst any
			switch head.APIVersion + " " + head.Kind {
			case "v1 ConfigMap":
				dst = &out.configMap
			case "apps/v1 Deployment":
				dst = &out.deployment
			case "v1 Service":
				dst = &out.service
			case "policy/v1 PodDisruptionBudget":
				dst = &out.pdb
			default:
				t.Fatalf("%s: unexpected object %s %s", path, head.APIVersion, head.Kind)
			}
			if err := doc.Decode(dst); err != nil {
				t.Fatalf("%s: %s: %v", path, head.Kind, err)
			}
			count[head.Kind]++
		}
		f.Close()
	}
	for _, k := range []string{"ConfigMap", "Deployment", "Service", "PodDisruptionBudget"} {
		if count[k] != 1 {
			t.Fatalf("%s: %d objects of kind %s, want 1", dir, count[k], k)
		}
	}
	return out
}

// flagValues reads --name value and --name=value arguments.
func flagValues(args []string) (map[string]string, error) {
	out := map[string]string{}
	for i := 0; i < len(args); i++ {
		a, ok := strings.CutPrefix(args[i], "--")
		if !ok {
			return nil, fmt.Errorf("argument %q is not a --flag", args[i])
		}
		if name, v, ok := strings.Cut(a, "="); ok {
			out[name] = v
			continue
		}
		if i+1 == len(args) {
			return nil, fmt.Errorf("--%s has no value", a)
		}
		out[a] = args[i+1]
		i++
	}
	return out, nil
}

// checkServeArgs checks the arguments after `pgtenant serve`: flags serve
// has, and a --config.
func checkServeArgs(t *testing.T, where string, args []string, facts serveFacts) map[string]string {
	t.Helper()
	flags, err := flagValues(args)
	if err != nil {
		t.Errorf("%s: %v", where, err)
		return nil
	}
	for name := range flags {
		if !facts.flags[name] {
			t.Errorf("%s: pgtenant serve has no flag --%s", where, name)
		}
	}
	if flags["config"] == "" {
		t.Errorf("%s: no --config: serve would run on the defaults (listen 127.0.0.1)", where)
	}
	return flags
}

func port(t *testing.T, what, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	n, err := strconv.Atoi(p)
	if err != nil || n == 0 {
		t.Fatalf("%s: %q has no fixed port", what, addr)
	}
	return n
}

// loadConfigMap loads the ConfigMap's config.yaml with router.LoadConfig,
// with env set in the environment (and every other secret variable the
// router reads unset).
func loadConfigMap(t *testing.T, m k8s, env map[string]string) router.Config {
	t.Helper()
	for _, k := range []string{router.EnvPassword, router.EnvAdminDSN, router.EnvCatalogDSN, router.EnvCatalogKey, router.EnvNeonAPIKey, router.EnvAdminToken,
		router.EnvClusterSecret, router.EnvClusterAdvertise} {
		t.Setenv(k, "")
	}
	for k, v := range env {
		t.Setenv(k, v)
	}
	body, ok := m.configMap.Data["config.yaml"]
	if !ok {
		t.Fatalf("ConfigMap %s has no config.yaml", m.configMap.Metadata.Name)
	}
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := router.LoadConfig(path)
	if err != nil {
		t.Fatalf("ConfigMap config.yaml: %v", err)
	}
	return cfg
}

// dummy is a stand-in for the secret in the environment variable name.
func dummy(name string) string {
	if strings.Contains(name, "DSN") {
		return "postgres://pgtenant@db.invalid:5432/postgres"
	}
	return catalog.NewKey() // valid as a catalog key, and as any password or token
}

// secretEnv is the Deployment's environment from Secrets: required ones
// (optional: false) and optional ones.
func secretEnv(c container) (required, optional []string) {
	for _, e := range c.Env {
		if e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
			continue
		}
		if e.ValueFrom.SecretKeyRef.Optional {
			optional = append(optional, e.Name)
		} else {
			required = append(required, e.Name)
		}
	}
	return required, optional
}

// dummyPodIP stands in for the pod's IP (fieldRef status.podIP).
const dummyPodIP = "10.244.1.7"

// plainEnv is the Deployment's environment that is not from Secrets, as
// Kubernetes sets it: fieldRef status.podIP as dummyPodIP, and $(NAME) in a
// value replaced by an earlier variable's value (a reference to a later or
// unknown one is left as is by Kubernetes, an error here).
func plainEnv(t *testing.T, c container) map[string]string {
	t.Helper()
	out := map[string]string{}
	ref := regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			out[e.Name] = ref.ReplaceAllStringFunc(e.Value, func(m string) string {
				v, ok := out[m[2:len(m)-1]]
				if !ok {
					t.Errorf("env %s: %s names no variable defined before it", e.Name, m)
				}
				return v
			})
		case e.ValueFrom.FieldRef != nil:
			if e.ValueFrom.FieldRef.FieldPath != "status.podIP" {
				t.Errorf("env %s: fieldRef %s: the test knows only status.podIP", e.Name, e.ValueFrom.FieldRef.FieldPath)
			}
			out[e.Name] = dummyPodIP
		}
	}
	return out
}

// exampleDrainTimeout is the drain_timeout the systemd units run with:
// their config file starts as config.example.yaml (the unit's install
// steps), or the defaults, whichever is larger.
func exampleDrainTimeout(t *testing.T) time.Duration {
	t.Helper()
	cfg, err := router.LoadConfig("../config.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return max(cfg.DrainTimeout, router.DefaultConfig().DrainTimeout)
}

// ---- systemd ----------------------------------------------------------

func TestSystemdUnits(t *testing.T) {
	facts := readServe(t)
	drain := exampleDrainTimeout(t)
	sysusers, err := os.ReadFile("systemd/pgtenant.sysusers")
	if err != nil {
		t.Fatal(err)
	}
	var sysUser string
	for line := range strings.Lines(string(sysusers)) {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "u" {
			sysUser = f[1]
		}
	}
	units := map[string]unit{}
	for _, name := range []string{"pgtenant.service", "pgtenant@.service"} {
		f, err := os.Open(filepath.Join("systemd", name))
		if err != nil {
			t.Fatal(err)
		}
		u, err := parseUnit(f)
		f.Close()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		units[name] = u
		t.Run(name, func(t *testing.T) {
			s := func(k string) string { return u.get("Service", k) }
			switch typ := s("Type"); {
			case typ == "notify" && !facts.sdReady:
				t.Errorf("Type=notify, but serve sends no sd_notify READY=1: systemd would time out the start")
			case typ != "notify" && typ != "exec" && typ != "simple":
				t.Errorf("Type=%q, want exec (or notify once serve sends READY=1)", typ)
			}

			argv := strings.Fields(s("ExecStart"))
			if len(argv) < 2 || argv[0] != "/usr/local/bin/pgtenant" || argv[1] != "serve" {
				t.Errorf("ExecStart=%q, want /usr/local/bin/pgtenant serve ...", s("ExecStart"))
			} else {
				checkServeArgs(t, "ExecStart", argv[2:], facts)
			}

			// ExecReload sends the signal serve reloads on; KillSignal
			// one it drains on.
			reload := strings.Fields(s("ExecReload"))
			var sig string
			for i, a := range reload {
				switch {
				case (a == "-s" || a == "--signal") && i+1 < len(reload):
					sig = reload[i+1]
				case strings.HasPrefix(a, "-") && a != "-s" && a != "--signal" && sig == "":
					sig = a[1:]
				}
			}
			if !strings.HasPrefix(sig, "SIG") {
				sig = "SIG" + sig
			}
			if len(reload) == 0 || !strings.HasSuffix(reload[0], "kill") || !strings.Contains(s("ExecReload"), "$MAINPID") || !slices.Contains(facts.reload, sig) {
				t.Errorf("ExecReload=%q: want kill sending one of %q (what runServe reloads on) to $MAINPID", s("ExecReload"), facts.reload)
			}
			if ks := s("KillSignal"); ks != "SIGTERM" || !slices.Contains(facts.drain, ks) {
				t.Errorf("KillSignal=%q: want SIGTERM, one of the signals serve drains on (%q)", ks, facts.drain)
			}
			if stop, err := parseTimeSpan(s("TimeoutStopSec")); err != nil || stop < drain+stopMargin {
				t.Errorf("TimeoutStopSec=%q (%v): want at least drain_timeout (%v) + %v, or systemd kills sessions mid-drain", s("TimeoutStopSec"), err, drain, stopMargin)
			}

			if n, err := strconv.Atoi(s("LimitNOFILE")); err != nil || n < 65536 {
				t.Errorf("LimitNOFILE=%q: want a number of at least 65536 (two descriptors per unpooled session)", s("LimitNOFILE"))
			}
			if env := s("EnvironmentFile"); env != "/etc/pgtenant/env" {
				t.Errorf("EnvironmentFile=%q, want /etc/pgtenant/env (the secrets)", env)
			}
			if r := s("Restart"); r != "on-failure" {
				t.Errorf("Restart=%q, want on-failure", r)
			}
			switch user := s("User"); {
			case s("DynamicUser") == "yes":
			case user == "" || user == "root" || user == "0":
				t.Errorf("User=%q: want a user of its own (or DynamicUser=yes)", user)
			case user != sysUser:
				t.Errorf("User=%q, but pgtenant.sysusers creates %q", user, sysUser)
			}
			for k, want := range map[string]string{"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes"} {
				if got := s(k); got != want {
					t.Errorf("%s=%q, want %s", k, got, want)
				}
			}
			// Go sizes the listen backlog from /proc/sys/net/core/somaxconn.
			if s("ProcSubset") == "pid" {
				t.Errorf("ProcSubset=pid hides /proc/sys/net/core/somaxconn: the listen backlog would fall to 128")
			}
			if !slices.Contains(u["Install"]["WantedBy"], "multi-user.target") {
				t.Errorf("WantedBy=%q, want multi-user.target", u["Install"]["WantedBy"])
			}
		})
	}

	// The template is the same service, one process per config file.
	one, tmpl := units["pgtenant.service"], units["pgtenant@.service"]
	if !strings.Contains(tmpl.get("Service", "ExecStart"), "%i") {
		t.Errorf("pgtenant@.service: ExecStart=%q does not use the instance name %%i", tmpl.get("Service", "ExecStart"))
	}
	for _, sec := range []string{"Service", "Install"} {
		a, b := without(one[sec], "ExecStart"), without(tmpl[sec], "ExecStart")
		if !reflect.DeepEqual(a, b) {
			t.Errorf("[%s] of pgtenant.service and pgtenant@.service differ beyond ExecStart:\n%v\n%v", sec, a, b)
		}
	}
}

// without is m without key.
func without(m map[string][]string, key string) map[string][]string {
	out := map[string][]string{}
	for k, v := range m {
		if k != key {
			out[k] = v
		}
	}
	return out
}

// ---- Docker -----------------------------------------------------------

func TestDockerfile(t *testing.T) {
	facts := readServe(t)
	m := readK8s(t, "kubernetes")
	cfg := loadConfigMap(t, m, nil)
	f, err := os.Open("docker/Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	stages, err := parseDockerfile(f)
	if err != nil {
		t.Fatal(err)
	}
	if len(stages) < 2 {
		t.Fatalf("%d stages, want a build stage and a final one", len(stages))
	}
	build, final := stages[0], stages[len(stages)-1]

	// Build: go.mod's Go, static, reproducible, versioned.
	img, tag, _ := strings.Cut(build.image, ":")
	version, _, _ := strings.Cut(tag, "-")
	if want := goDirective(t); img != "golang" || version != want {
		t.Errorf("build stage FROM %s: want golang:%s (go.mod's go directive)", build.image, want)
	}
	runs := strings.Join(build.all("RUN"), "\n")
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "go build", "./cmd/pgtenant"} {
		if !strings.Contains(runs, want) {
			t.Errorf("build stage: no %q in its RUN lines", want)
		}
	}
	if m := regexp.MustCompile(`-X main\.(\w+)=`).FindStringSubmatch(runs); m == nil || !facts.vars[m[1]] {
		t.Errorf("build stage: -ldflags -X main.<var> must name a var of cmd/pgtenant (version); RUN lines:\n%s", runs)
	}

	// Final: no shell, certificates, not root.
	distroless := strings.HasPrefix(final.image, "gcr.io/distroless/static")
	copies := strings.Join(final.all("COPY"), "\n")
	if !distroless && !(final.image == "scratch" && strings.Contains(copies, "ca-certificates")) {
		t.Errorf("final stage FROM %s: want gcr.io/distroless/static (or scratch with a COPY of the CA certificates)", final.image)
	}
	user, _, _ := strings.Cut(final.last("USER"), ":")
	if user == "" || user == "root" || user == "0" {
		t.Errorf("final stage USER %q: want a non-root user", final.last("USER"))
	}
	if hc := final.last("HEALTHCHECK"); hc != "" && hc != "NONE" {
		t.Errorf("HEALTHCHECK %s: the final image has no shell or HTTP client to run it", hc)
	}

	var entry, cmd []string
	if err := json.Unmarshal([]byte(final.last("ENTRYPOINT")), &entry); err != nil || len(entry) < 2 {
		t.Fatalf("ENTRYPOINT %q: want the exec form [\"/pgtenant\", \"serve\"] (%v)", final.last("ENTRYPOINT"), err)
	}
	copied := false
	for _, cp := range final.all("COPY") {
		f := strings.Fields(cp)
		copied = copied || f[len(f)-1] == entry[0]
	}
	if !copied || entry[1] != "serve" {
		t.Errorf("ENTRYPOINT %q: want the binary the final stage copies in (%s), then serve", entry, copies)
	}
	if err := json.Unmarshal([]byte(final.last("CMD")), &cmd); err != nil {
		t.Errorf("CMD %q: want the exec form (%v)", final.last("CMD"), err)
	}
	checkServeArgs(t, "ENTRYPOINT+CMD", append(entry[2:], cmd...), facts)
	if ss := final.last("STOPSIGNAL"); ss != "" && !slices.Contains(facts.drain, ss) {
		t.Errorf("STOPSIGNAL %s: serve drains on %q", ss, facts.drain)
	}

	// The ports the Kubernetes config listens on.
	var exposed []int
	for _, e := range final.all("EXPOSE") {
		for _, p := range strings.Fields(e) {
			n, err := strconv.Atoi(strings.TrimSuffix(p, "/tcp"))
			if err != nil {
				t.Errorf("EXPOSE %s: %v", p, err)
			}
			exposed = append(exposed, n)
		}
	}
	slices.Sort(exposed)
	want := []int{port(t, "listen", cfg.Listen), port(t, "admin.listen", cfg.Admin.Listen)}
	slices.Sort(want)
	if !slices.Equal(exposed, want) {
		t.Errorf("EXPOSE %v, want the ConfigMap's listen and admin.listen ports %v", exposed, want)
	}

	// The non-root user is the one the pods run as.
	if sc := m.deployment.Spec.Template.Spec.SecurityContext; sc.RunAsUser != nil && strconv.FormatInt(*sc.RunAsUser, 10) != user {
		t.Errorf("Deployment runAsUser %d, image USER %s", *sc.RunAsUser, user)
	}
}

// ---- Kubernetes -------------------------------------------------------

// pgtenantContainer is the Deployment's pgtenant container.
func pgtenantContainer(t *testing.T, m k8s) container {
	t.Helper()
	for _, c := range m.deployment.Spec.Template.Spec.Containers {
		if c.Name == "pgtenant" {
			return c
		}
	}
	t.Fatal("Deployment has no container named pgtenant")
	return container{}
}

// containerPort resolves a probe's or a Service's port (a number or a
// container port's name) to a number.
func containerPort(c container, p any) int {
	switch p := p.(type) {
	case int:
		return p
	case string:
		for _, cp := range c.Ports {
			if cp.Name == p {
				return cp.ContainerPort
			}
		}
		if n, err := strconv.Atoi(p); err == nil {
			return n
		}
	}
	return 0
}

func subset(sel, labels map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func TestKubernetesManifests(t *testing.T) {
	facts := readServe(t)
	m := readK8s(t, "kubernetes")
	cfg := loadConfigMap(t, m, nil)
	listen, admin := port(t, "ConfigMap listen", cfg.Listen), port(t, "ConfigMap admin.listen", cfg.Admin.Listen)
	d := m.deployment
	pod := d.Spec.Template.Spec
	podLabels := d.Spec.Template.Metadata.Labels
	c := pgtenantContainer(t, m)

	if !subset(d.Spec.Selector.MatchLabels, podLabels) {
		t.Errorf("Deployment selector %v does not select its pods %v", d.Spec.Selector.MatchLabels, podLabels)
	}

	// --config names the ConfigMap's config.yaml where it is mounted.
	flags := checkServeArgs(t, "Deployment args", c.Args, facts)
	var mounted string
	for _, v := range pod.Volumes {
		if v.ConfigMap == nil || v.ConfigMap.Name != m.configMap.Metadata.Name {
			continue
		}
		for _, vm := range c.VolumeMounts {
			if vm.Name == v.Name {
				mounted = filepath.Join(vm.MountPath, "config.yaml")
			}
		}
	}
	if mounted == "" || flags["config"] != mounted {
		t.Errorf("--config %q, but ConfigMap %s's config.yaml is mounted at %q", flags["config"], m.configMap.Metadata.Name, mounted)
	}

	// Ports: the container's are the config's.
	if containerPort(c, "postgres") != listen || containerPort(c, "admin") != admin {
		t.Errorf("container ports %+v: want postgres %d and admin %d (the ConfigMap's listen and admin.listen)", c.Ports, listen, admin)
	}

	// Cluster: one ConfigMap for every pod, so IDs are claimed (auto) and
	// each pod advertises its own IP on the peer port.
	if !cfg.Cluster.On() || !cfg.InstanceID.Auto() {
		t.Fatalf("ConfigMap: cluster.peer_listen %q, instance_id %v: want the cluster on with instance_id auto (every pod reads one file)",
			cfg.Cluster.PeerListen, cfg.InstanceID)
	}
	peer := port(t, "ConfigMap cluster.peer_listen", cfg.Cluster.PeerListen)
	if got := containerPort(c, "peer"); got != peer {
		t.Errorf("container ports %+v: want peer %d (the ConfigMap's cluster.peer_listen)", c.Ports, peer)
	}
	env := plainEnv(t, c)
	if adv := env[router.EnvClusterAdvertise]; adv != net.JoinHostPort(dummyPodIP, strconv.Itoa(peer)) {
		t.Errorf("env %s = %q with the pod's IP %s: want %s:%d, the pod's IP (fieldRef status.podIP) and cluster.peer_listen's port",
			router.EnvClusterAdvertise, adv, dummyPodIP, dummyPodIP, peer)
	}
	if required, _ := secretEnv(c); !slices.Contains(required, router.EnvClusterSecret) {
		t.Errorf("env %s: want it from the Secret, required (forwards are signed with it)", router.EnvClusterSecret)
	}

	// Probes: HTTP on the admin port; the paths are checked against a
	// running router in TestProbesAgainstRouter.
	for name, p := range map[string]*probe{"readinessProbe": c.ReadinessProbe, "livenessProbe": c.LivenessProbe} {
		if p == nil || p.HTTPGet == nil {
			t.Errorf("%s: want an httpGet on the admin port", name)
			continue
		}
		if got := containerPort(c, p.HTTPGet.Port); got != admin {
			t.Errorf("%s on port %v (%d), want the admin port %d", name, p.HTTPGet.Port, got, admin)
		}
	}

	// Stopping: the preStop sleep, then the drain, within the grace period.
	grace := 30 * time.Second // Kubernetes' default
	if pod.TerminationGracePeriodSeconds != nil {
		grace = time.Duration(*pod.TerminationGracePeriodSeconds) * time.Second
	}
	var sleep time.Duration
	if ps := c.Lifecycle.PreStop; ps != nil && ps.Sleep != nil {
		sleep = time.Duration(ps.Sleep.Seconds) * time.Second
	}
	if sleep == 0 {
		t.Errorf("no preStop sleep: the listener closes before every node's kube-proxy stops sending to the pod")
	}
	if grace < sleep+cfg.DrainTimeout+stopMargin {
		t.Errorf("terminationGracePeriodSeconds %v < preStop sleep %v + drain_timeout %v + %v: sessions would be killed mid-drain", grace, sleep, cfg.DrainTimeout, stopMargin)
	}

	// Not root, nothing written.
	psc, csc := pod.SecurityContext, c.SecurityContext
	if !(isTrue(psc.RunAsNonRoot) || isTrue(csc.RunAsNonRoot)) {
		t.Errorf("runAsNonRoot is not set")
	}
	for _, u := range []*int64{psc.RunAsUser, csc.RunAsUser} {
		if u != nil && *u == 0 {
			t.Errorf("runAsUser 0")
		}
	}
	if !isTrue(csc.ReadOnlyRootFilesystem) {
		t.Errorf("readOnlyRootFilesystem is not true")
	}
	if csc.AllowPrivilegeEscalation == nil || *csc.AllowPrivilegeEscalation {
		t.Errorf("allowPrivilegeEscalation is not false")
	}
	if c.Resources.Requests["cpu"] == "" || c.Resources.Requests["memory"] == "" || c.Resources.Limits["memory"] == "" {
		t.Errorf("resources %+v: want cpu and memory requests and a memory limit", c.Resources)
	}

	// Service: the client port, to the pods.
	if !subset(m.service.Spec.Selector, podLabels) {
		t.Errorf("Service selector %v does not select the pods %v", m.service.Spec.Selector, podLabels)
	}
	var toListen bool
	for _, p := range m.service.Spec.Ports {
		tp := p.TargetPort
		if tp == nil {
			tp = p.Port
		}
		switch containerPort(c, tp) {
		case listen:
			toListen = true
		case admin:
			t.Errorf("Service port %s exposes the admin listener", p.Name)
		case peer:
			t.Errorf("Service port %s exposes the peer listener (pods dial each other's IPs)", p.Name)
		}
	}
	if !toListen {
		t.Errorf("Service ports %+v: none reaches the client port %d", m.service.Spec.Ports, listen)
	}

	// PodDisruptionBudget: selects the pods and lets one go.
	if !subset(m.pdb.Spec.Selector.MatchLabels, podLabels) {
		t.Errorf("PodDisruptionBudget selector %v does not select the pods %v", m.pdb.Spec.Selector.MatchLabels, podLabels)
	}
	replicas := 1
	if d.Spec.Replicas != nil {
		replicas = *d.Spec.Replicas
	}
	switch minA, maxU := m.pdb.Spec.MinAvailable, m.pdb.Spec.MaxUnavailable; {
	case (minA == nil) == (maxU == nil):
		t.Errorf("PodDisruptionBudget: want one of minAvailable and maxUnavailable")
	case maxU != nil && (maxU == 0 || maxU == "0%"):
		t.Errorf("PodDisruptionBudget maxUnavailable %v: no node could ever be drained", maxU)
	case minA != nil && (minA == "100%" || intOr(minA, 0) >= replicas):
		t.Errorf("PodDisruptionBudget minAvailable %v with %d replicas: no node could ever be drained", minA, replicas)
	}
	if replicas < 2 {
		t.Errorf("replicas %d: a PodDisruptionBudget needs at least 2 to let one go", replicas)
	}
}

func isTrue(b *bool) bool { return b != nil && *b }

// intOr is n as an int, or dflt for anything else (a percentage).
func intOr(n any, dflt int) int {
	if i, ok := n.(int); ok {
		return i
	}
	return dflt
}

// The Deployment's secrets are variables the router reads, and the
// required ones are enough for the ConfigMap's config to validate.
func TestKubernetesConfigValidates(t *testing.T) {
	m := readK8s(t, "kubernetes")
	c := pgtenantContainer(t, m)
	required, optional := secretEnv(c)
	if len(required) == 0 {
		t.Fatal("the Deployment takes no secrets from a Secret")
	}
	for _, name := range append(slices.Clone(required), optional...) {
		// A variable the router reads changes what LoadConfig returns.
		if reflect.DeepEqual(loadConfigMap(t, m, nil), loadConfigMap(t, m, map[string]string{name: dummy(name)})) {
			t.Errorf("env %s: the router does not read it (router.Env* names the ones it does)", name)
		}
	}
	// So are the ones with values of their own (the pod's address).
	env := plainEnv(t, c)
	for name, v := range env {
		if !strings.HasPrefix(name, "PGTENANT_") {
			continue
		}
		if reflect.DeepEqual(loadConfigMap(t, m, nil), loadConfigMap(t, m, map[string]string{name: v})) {
			t.Errorf("env %s: the router does not read it (router.Env* names the ones it does)", name)
		}
	}
	for _, name := range required {
		env[name] = dummy(name)
	}
	cfg := loadConfigMap(t, m, env)
	if err := cfg.Validate(); err != nil {
		t.Errorf("ConfigMap config.yaml with the Deployment's environment and required secrets %q:\n%v", required, err)
	}
	// The ConfigMap listens where the pod can be reached.
	for what, addr := range map[string]string{"listen": cfg.Listen, "admin.listen": cfg.Admin.Listen} {
		if host, _, err := net.SplitHostPort(addr); err != nil || !net.ParseIP(host).IsUnspecified() {
			t.Errorf("%s %q: want 0.0.0.0 (or [::]), reachable from outside the pod", what, addr)
		}
	}
}

// The Deployment's probes, run against a router started from the
// ConfigMap's config: both answer 200 while it serves; on SIGTERM (ctx
// ends) the readiness probe turns 503 for the whole drain and the liveness
// probe stays 200, so Kubernetes stops sending clients without restarting
// the pod.
func TestProbesAgainstRouter(t *testing.T) {
	pgtest.CheckGoroutines(t)
	m := readK8s(t, "kubernetes")
	c := pgtenantContainer(t, m)
	if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil || c.LivenessProbe == nil || c.LivenessProbe.HTTPGet == nil {
		t.Fatal("the Deployment's container needs an httpGet readinessProbe and livenessProbe")
	}
	ready, live := c.ReadinessProbe.HTTPGet.Path, c.LivenessProbe.HTTPGet.Path

	cl := pgtest.Shared(t)
	cfg := loadConfigMap(t, m, nil)
	cfg.Listen, cfg.Admin.Listen = "127.0.0.1:0", "127.0.0.1:0"
	cfg.Auth.Password = "deploy-test-secret"
	cfg.Catalog.Key = catalog.NewKey()
	cfg.Catalog.DSN = cl.AdminDSN(pgtest.CreateDB(t, cl))
	cfg.Provider.Local.AdminDSN = cl.AdminDSN("postgres")
	cfg.Provider.Local.Prefix = "dp_"
	// The ConfigMap's cluster (instance_id auto) on loopback: the pod's
	// address and secret come from the environment.
	cfg.Cluster.PeerListen, cfg.Cluster.Advertise, cfg.Cluster.Secret = "127.0.0.1:0", "", catalog.NewKey()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r, err := router.New(ctx, cfg, router.Options{})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Serve(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()

	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	get := func(path string) int {
		resp, err := hc.Get("http://" + r.AdminAddr().String() + path)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, p := range []string{ready, live} {
		if code := get(p); code != http.StatusOK {
			t.Fatalf("GET %s on a serving router: %d, want 200", p, code)
		}
	}

	// A live session keeps the drain going until it ends.
	cctx, ccancel := context.WithTimeout(context.Background(), time.Minute)
	defer ccancel()
	conn, err := pgx.Connect(cctx, "postgres://deploy_probe:deploy-test-secret@"+r.Addr().String()+"/app?sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	cancel() // SIGTERM
	poll.Until(t, 10*time.Second, "GET "+ready+" to answer 503 during the drain", func() bool { return get(ready) == http.StatusServiceUnavailable })
	if code := get(live); code != http.StatusOK {
		t.Errorf("GET %s during the drain: %d, want 200 (a draining pod must not be restarted)", live, code)
	}
	if !r.Proxy().Draining() {
		t.Fatal("the router is not draining")
	}
	_ = conn.Close(context.Background())
}
