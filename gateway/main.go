// ganserve-gateway: the native front end of a ganserve server (`frontend: native`).
//
// One Python process spends ~0.3 ms of CPU, under its GIL, on the gRPC work of every call, however little
// the call computes; with single-sample calls from many clients that, not the model, is the limit. The
// gateway takes the calls instead (grpc-go: no GIL, both cores) and hands the Python server their work in
// bulk: Sample and SampleConditional calls are gathered into one SampleBatch message, sent on the backend's
// batch socket whenever it has room (batch.go); every other call is relayed unchanged (proxy.go). Requests
// and replies are never decoded here, so validation, latents, models, errors and metrics stay in one place:
// the Python server, listening on private Unix sockets. The Python server starts and supervises this
// process (server/frontend.py); run by hand it needs -listen, -backend and -batch-socket.
package main

import (
	"bufio"
	"context"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

type gateway struct {
	backend *grpc.ClientConn
	batch   *batcher
	token   string // bearer token required on every call but health, checked before its request is read
	queue   int
	metrics *metrics
	limits  requestLimits
}

type options struct {
	listen, backend, batchSocket string
	maxBatch, inflight, maxQueue int
	maxMessage                   int
	maxRequest, maxUpload        int
	tlsCert, tlsKey, tlsClientCA string
	tokenFile, metricsListen     string
	drain, queueTimeout          time.Duration
	parentPipe, tokenStdin       bool
	conns                        connLimits
}

func parseFlags(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("ganserve-gateway", flag.ContinueOnError)
	fs.StringVar(&o.listen, "listen", "", "public address, host:port (required)")
	fs.StringVar(&o.backend, "backend", "", "the Python server's gRPC: unix:/path or host:port (required)")
	fs.StringVar(&o.batchSocket, "batch-socket", "", "the Python server's batch socket, a Unix socket path (required)")
	fs.IntVar(&o.maxBatch, "max-batch", 64, "most Sample/SampleConditional calls in one SampleBatch")
	fs.IntVar(&o.inflight, "inflight", 2, "batches in flight at once, one connection each (about the cores the backend computes on)")
	fs.IntVar(&o.maxQueue, "max-queue", 1024, "calls waiting for a batch; more are refused RESOURCE_EXHAUSTED")
	fs.IntVar(&o.maxMessage, "max-message-bytes", 64<<20, "largest reply message")
	fs.IntVar(&o.maxRequest, "max-request-bytes", 8<<20, "largest request message of every call but EvaluateDivergence")
	fs.IntVar(&o.maxUpload, "max-upload-bytes", 64<<20, "largest EvaluateDivergence request (uploaded samples)")
	fs.StringVar(&o.tlsCert, "tls-cert", "", "server certificate (PEM); TLS with -tls-key")
	fs.StringVar(&o.tlsKey, "tls-key", "", "server private key (PEM)")
	fs.StringVar(&o.tlsClientCA, "tls-client-ca", "", "CA (PEM) whose client certificates are required")
	fs.StringVar(&o.tokenFile, "auth-token-file", "", "file holding the bearer token required on every call but health")
	fs.BoolVar(&o.tokenStdin, "auth-token-stdin", false,
		"read the bearer token from the first line of standard input (the supervisor's way: no file, no argument)")
	fs.DurationVar(&o.queueTimeout, "queue-timeout", 10*time.Second, "a call that waited longer for a batch is refused RESOURCE_EXHAUSTED")
	fs.DurationVar(&o.drain, "drain", 10*time.Second, "on SIGTERM/SIGINT, time in-flight calls get to finish")
	fs.StringVar(&o.metricsListen, "metrics-listen", "", "serve Prometheus /metrics on host:port (empty: off)")
	fs.IntVar(&o.conns.max, "max-connections", 4096, "open client connections at most; more are closed at once")
	fs.DurationVar(&o.conns.idle, "connection-idle", 5*time.Minute, "close a connection that had no call for this long")
	fs.DurationVar(&o.conns.age, "connection-max-age", time.Hour, "ask a client to reconnect after this long (0: never)")
	fs.DurationVar(&o.conns.grace, "connection-age-grace", time.Hour, "calls in flight at a connection's age get this long")
	fs.DurationVar(&o.conns.handshake, "handshake-timeout", 10*time.Second, "a new connection's TLS and HTTP/2 set-up at most")
	fs.DurationVar(&o.conns.keepalive, "keepalive", time.Minute, "ping a connection silent this long; close it if no answer in 20 s")
	fs.BoolVar(&o.parentPipe, "stop-on-stdin-eof", false,
		"stop (draining) when standard input closes: the supervising process holds its other end, so the gateway "+
			"never outlives it, even when it is killed")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	switch {
	case o.listen == "" || o.backend == "" || o.batchSocket == "":
		return o, errors.New("-listen, -backend and -batch-socket are required")
	case o.maxBatch < 1 || o.inflight < 1 || o.maxQueue < 1:
		return o, errors.New("-max-batch, -inflight and -max-queue must be >= 1")
	case o.queueTimeout <= 0:
		return o, errors.New("-queue-timeout must be > 0")
	case o.conns.max < 1 || o.conns.idle <= 0 || o.conns.handshake <= 0 || o.conns.keepalive <= 0 || o.conns.age < 0 ||
		o.conns.grace < 0:
		return o, errors.New("-max-connections, -connection-idle, -handshake-timeout and -keepalive must be > 0; " +
			"-connection-max-age and -connection-age-grace >= 0")
	case o.maxMessage < 1024 || o.maxRequest < 1024 || o.maxUpload < 1024:
		return o, errors.New("-max-message-bytes, -max-request-bytes and -max-upload-bytes must be >= 1024")
	case (o.tlsCert == "") != (o.tlsKey == ""):
		return o, errors.New("-tls-cert and -tls-key go together")
	case o.tlsClientCA != "" && o.tlsCert == "":
		return o, errors.New("-tls-client-ca needs -tls-cert and -tls-key")
	}
	return o, nil
}

// dialBackend connects to the Python server's gRPC, for the calls relayed as they are.
func dialBackend(addr string, maxMessage int) (*grpc.ClientConn, error) {
	opts := []grpc.DialOption{
		grpc.WithInsecure(), // a private Unix socket, or loopback when run by hand
		grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{}),
			grpc.MaxCallRecvMsgSize(maxMessage), grpc.MaxCallSendMsgSize(maxMessage)),
		grpc.WithInitialWindowSize(4 << 20), grpc.WithInitialConnWindowSize(16 << 20),
	}
	if path := strings.TrimPrefix(addr, "unix:"); path != addr {
		opts = append(opts, grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		}))
		addr = "passthrough:///" + path
	}
	return grpc.Dial(addr, opts...)
}

func serverCreds(o options) (credentials.TransportCredentials, error) {
	cert, err := tls.LoadX509KeyPair(o.tlsCert, o.tlsKey)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if o.tlsClientCA != "" {
		pem, err := os.ReadFile(o.tlsClientCA)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s: no certificate found", o.tlsClientCA)
		}
		cfg.ClientCAs, cfg.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return credentials.NewTLS(cfg), nil
}

// authorize checks a call's bearer token (constant time), as the backend does, before the gateway reads its
// request: a client without the token costs no more than its headers and the stream's flow-control window.
// Health stays open, as on the backend.
func (g *gateway) authorize(ctx context.Context, method string) error {
	if g.token == "" || strings.HasPrefix(method, healthPrefix) {
		return nil
	}
	md, _ := metadata.FromIncomingContext(ctx)
	given := ""
	if v := md.Get("authorization"); len(v) > 0 {
		given = v[len(v)-1]
	}
	if subtle.ConstantTimeCompare([]byte(given), []byte("Bearer "+g.token)) != 1 {
		return status.Error(codes.Unauthenticated, "missing or wrong bearer token (metadata authorization)")
	}
	return nil
}

// batched is the handler of Sample or SampleConditional: queue the call, wait for its part of a batch. It is
// registered as a stream handler although the methods are unary, because grpc-go reads a unary call's request
// before its handler runs: this way the token is checked first and a client without it sends no body.
func (g *gateway) batched(method string) grpc.StreamHandler {
	return func(_ interface{}, stream grpc.ServerStream) error {
		t0 := time.Now()
		out, err := g.sample(stream.Context(), method, stream.RecvMsg)
		if err == nil {
			err = stream.SendMsg(out)
		}
		g.metrics.call(method, status.Code(err), t0, true)
		return err
	}
}

func (g *gateway) sample(ctx context.Context, method string, dec func(interface{}) error) (*frame, error) {
	if err := g.authorize(ctx, method); err != nil {
		return nil, err
	}
	in := &frame{}
	if err := dec(in); err != nil {
		return nil, err
	}
	if err := g.limits.check("/"+service+"/"+method, len(in.data)); err != nil {
		return nil, err
	}
	it := &item{method: method, req: in.data, ctx: ctx, done: make(chan reply, 1)}
	if !g.batch.submit(it) {
		return nil, status.Errorf(codes.ResourceExhausted,
			"server busy: %d calls waiting for the model (gateway max_queue); retry with backoff", g.queue)
	}
	select {
	case r := <-it.done:
		if err := ctx.Err(); err != nil { // the reply came after the deadline: the client was promised none
			return nil, status.FromContextError(err).Err()
		}
		if r.err != nil {
			return nil, r.err
		}
		return &frame{data: r.data}, nil
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
}

func run(args []string) error {
	o, err := parseFlags(args)
	if err != nil {
		return err
	}
	token := ""
	stdin := bufio.NewReader(os.Stdin)
	switch {
	case o.tokenStdin:
		line, err := stdin.ReadString('\n')
		if err != nil {
			return fmt.Errorf("-auth-token-stdin: no token line on standard input: %v", err)
		}
		token = strings.TrimSpace(line)
	case o.tokenFile != "":
		b, err := os.ReadFile(o.tokenFile)
		if err != nil {
			return err
		}
		token = strings.TrimSpace(string(b))
	}
	conn, err := dialBackend(o.backend, o.maxMessage)
	if err != nil {
		return err
	}
	defer conn.Close()
	limits := requestLimits{request: o.maxRequest, upload: o.maxUpload}
	g := &gateway{backend: conn, token: token, queue: o.maxQueue, limits: limits}
	g.metrics = newMetrics(func() int { return len(g.batch.queue) })
	g.batch = newBatcher(o.batchSocket, o.maxBatch, o.inflight, o.maxQueue, o.queueTimeout, g.metrics)
	opts := []grpc.ServerOption{
		grpc.CustomCodec(rawCodec{}), grpc.UnknownServiceHandler(g.forward),
		grpc.MaxRecvMsgSize(limits.receive()), grpc.MaxSendMsgSize(o.maxMessage),
	}
	opts = append(opts, o.conns.serverOptions()...)
	if o.tlsCert != "" {
		creds, err := serverCreds(o)
		if err != nil {
			return err
		}
		opts = append(opts, grpc.Creds(creds))
	}
	srv := grpc.NewServer(opts...)
	srv.RegisterService(&grpc.ServiceDesc{
		ServiceName: service,
		HandlerType: (*interface{})(nil),
		Streams: []grpc.StreamDesc{ // (unary on the wire; see batched)
			{StreamName: "Sample", Handler: g.batched("Sample")},
			{StreamName: "SampleConditional", Handler: g.batched("SampleConditional")},
		}, // the service's other methods reach forward()
	}, struct{}{})
	tcp, err := net.Listen("tcp", o.listen)
	if err != nil {
		return err
	}
	lis := &limitListener{Listener: tcp, max: o.conns.max}
	// The supervisor reads these lines for the bound ports (either may ask for port 0).
	if o.metricsListen != "" {
		// As the Python server does: metrics are not worth refusing to serve over.
		if addr, err := g.metrics.serve(o.metricsListen); err != nil {
			log.Printf("error: cannot serve metrics on %s: %v", o.metricsListen, err)
		} else {
			fmt.Printf("ganserve-gateway metrics on http://%s/metrics\n", addr)
		}
	}
	fmt.Printf("ganserve-gateway listening on %s\n", lis.Addr())
	os.Stdout.Sync()
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	if o.parentPipe {
		go func() {
			io.Copy(io.Discard, stdin) // returns when the supervisor's end closes (it exited or died)
			log.Printf("the supervising process is gone")
			stop <- syscall.SIGTERM
		}()
	}
	go func() {
		<-stop
		log.Printf("draining in-flight calls for up to %s", o.drain)
		done := make(chan struct{})
		go func() { srv.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-time.After(o.drain):
			srv.Stop()
		}
	}()
	return srv.Serve(lis)
}

func main() {
	if os.Getenv("GOGC") == "" {
		// Calls allocate small, short-lived buffers at a high rate: collecting less often costs a few MB and
		// saves CPU (one pair of rounds at 32 clients: 0.24-0.25 against 0.26-0.27 cores).
		debug.SetGCPercent(400)
	}
	log.SetPrefix("ganserve-gateway: ")
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	if err := run(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		log.Printf("error: %v", err)
		os.Exit(1)
	}
}
