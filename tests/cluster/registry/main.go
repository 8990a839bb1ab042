// Command registry is the tests' OCI registry: go-containerregistry's registry handler with
// blobs kept on disk (so a test can change their bytes at rest) and, when asked, the
// authentication real registries demand.
//
//		registry --port 0 --blobs-dir DIR [--auth none|basic|token --user U --password P]
//
//	  - basic: every request needs HTTP Basic credentials (distribution's htpasswd mode);
//	    otherwise 401 with `WWW-Authenticate: Basic realm="..."`.
//	  - token: Docker/OCI token auth (Docker Hub, GHCR, Harbor). Registry requests need
//	    `Authorization: Bearer <token>`; otherwise 401 with a Bearer challenge naming the realm
//	    `http://HOST/token`, the service and the repository scope. GET /token checks Basic
//	    credentials and hands out an opaque random token, remembered in memory.
//
// Plain HTTP on 127.0.0.1 only; it logs "serving on port N" once listening.
package main

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

const service = "airssys-test-registry"

func main() {
	port := flag.Int("port", 0, "port to listen on (0 picks a free one)")
	blobsDir := flag.String("blobs-dir", "", "directory holding blobs as <algorithm>/<hex> (required)")
	mode := flag.String("auth", "none", "none, basic or token")
	user := flag.String("user", "", "user name required by --auth basic|token")
	password := flag.String("password", "", "password required by --auth basic|token")
	flag.Parse()

	if *blobsDir == "" {
		log.Fatal("--blobs-dir is required")
	}
	if err := os.MkdirAll(*blobsDir, 0o755); err != nil {
		log.Fatal(err)
	}
	if *mode != "none" && (*user == "" || *password == "") {
		log.Fatalf("--auth %s needs --user and --password", *mode)
	}

	// registry.New logs every request itself.
	var handler http.Handler = registry.New(registry.WithBlobHandler(atRest{registry.NewDiskBlobHandler(*blobsDir)}))
	creds := credentials{user: *user, password: *password}
	switch *mode {
	case "none":
	case "basic":
		handler = basicAuth(creds, handler)
	case "token":
		handler = tokenAuth(creds, handler)
	default:
		log.Fatalf("--auth must be none, basic or token, not %q", *mode)
	}

	listener, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", *port))
	if err != nil {
		log.Fatal(err)
	}
	// tests/support reads the port from this line.
	log.Printf("serving on port %d", listener.Addr().(*net.TCPAddr).Port)
	server := &http.Server{Handler: handler, ReadHeaderTimeout: 5 * time.Second}
	log.Fatal(server.Serve(listener))
}

// atRest serves blobs exactly as they are on disk. The disk handler's Stat re-hashes a blob
// and reports a changed one as missing; hiding Stat makes the registry serve changed bytes
// under the old digest, as a registry on plain object storage would, so clients' own digest
// checks are what the tests exercise.
type atRest struct{ disk registry.BlobHandler }

func (b atRest) Get(ctx context.Context, repo string, h v1.Hash) (io.ReadCloser, error) {
	rc, err := b.disk.Get(ctx, repo, h)
	if errors.Is(err, fs.ErrNotExist) {
		// Without Stat, a missing file must read as an unknown blob (404), not a failure.
		return nil, registry.ErrNotFound
	}
	return rc, err
}

func (b atRest) Put(ctx context.Context, repo string, h v1.Hash, rc io.ReadCloser) error {
	put, ok := b.disk.(registry.BlobPutHandler)
	if !ok {
		return errors.New("blob handler cannot store blobs")
	}
	return put.Put(ctx, repo, h, rc)
}

func (b atRest) Delete(ctx context.Context, repo string, h v1.Hash) error {
	del, ok := b.disk.(registry.BlobDeleteHandler)
	if !ok {
		return errors.New("blob handler cannot delete blobs")
	}
	return del.Delete(ctx, repo, h)
}

type credentials struct{ user, password string }

// match compares in constant time, like a real registry should.
func (c credentials) match(r *http.Request) bool {
	user, password, ok := r.BasicAuth()
	return ok &&
		subtle.ConstantTimeCompare([]byte(user), []byte(c.user)) == 1 &&
		subtle.ConstantTimeCompare([]byte(password), []byte(c.password)) == 1
}

func unauthorized(w http.ResponseWriter, challenge string) {
	w.Header().Set("WWW-Authenticate", challenge)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusUnauthorized)
	_, _ = io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`)
}

func basicAuth(c credentials, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !c.match(r) {
			log.Printf("401 (basic) %s %s", r.Method, r.URL)
			unauthorized(w, fmt.Sprintf("Basic realm=%q", service))
			return
		}
		next.ServeHTTP(w, r)
	})
}

func tokenAuth(c credentials, next http.Handler) http.Handler {
	var mu sync.Mutex
	tokens := map[string]bool{}
	mux := http.NewServeMux()
	mux.HandleFunc("/token", func(w http.ResponseWriter, r *http.Request) {
		if !c.match(r) {
			log.Printf("401 (token endpoint) for %q", r.URL.Query().Get("scope"))
			unauthorized(w, fmt.Sprintf("Basic realm=%q", service))
			return
		}
		raw := make([]byte, 24)
		if _, err := rand.Read(raw); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		token := hex.EncodeToString(raw)
		mu.Lock()
		tokens[token] = true
		mu.Unlock()
		// Docker's clients read "token", OAuth2-style ones "access_token"; send both.
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{
			"token": token, "access_token": token, "expires_in": 3600,
			"issued_at": time.Now().UTC().Format(time.RFC3339),
		})
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		mu.Lock()
		valid := ok && tokens[token]
		mu.Unlock()
		if !valid {
			challenge := fmt.Sprintf("Bearer realm=%q,service=%q", "http://"+r.Host+"/token", service)
			if scope := scopeOf(r); scope != "" {
				challenge += fmt.Sprintf(",scope=%q", scope)
			}
			log.Printf("401 (bearer) %s %s", r.Method, r.URL)
			unauthorized(w, challenge)
			return
		}
		next.ServeHTTP(w, r)
	})
	return mux
}

// scopeOf names the repository a request is about, as `repository:NAME:ACTIONS`; empty for
// the /v2/ ping and the catalog.
func scopeOf(r *http.Request) string {
	path := strings.TrimPrefix(r.URL.Path, "/v2/")
	for _, kind := range []string{"/manifests/", "/blobs/", "/tags/", "/referrers/"} {
		if name, _, found := strings.Cut(path, kind); found {
			actions := "pull"
			if r.Method != http.MethodGet && r.Method != http.MethodHead {
				actions = "pull,push"
			}
			return fmt.Sprintf("repository:%s:%s", name, actions)
		}
	}
	return ""
}
