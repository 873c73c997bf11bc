package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"net"
	"time"

	"github.com/golang/protobuf/proto"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	protov2 "google.golang.org/protobuf/proto"
)

// item is one Sample or SampleConditional call waiting for its answer.
type item struct {
	method string          // "Sample" or "SampleConditional"
	req    []byte          // the client's request, serialized
	ctx    context.Context // the client's call: deadline, cancellation
	done   chan reply      // buffered: the sender never blocks
	queued time.Time       // when it entered the queue
}

type reply struct {
	data []byte // SampleResponse, serialized
	err  error  // or the call's status
}

// batcher gathers single calls into SampleBatch messages for the backend. Each of its `inflight` slots is one
// connection to the backend's batch socket carrying one batch at a time (one per core the backend computes
// on, by default); while they are busy, arriving calls wait in the queue, and the next batch takes all of
// them (up to maxBatch) as soon as a slot frees. So batches are one call long when the load is light (no
// added delay) and grow with the load. A full queue refuses at once with RESOURCE_EXHAUSTED.
//
// The socket carries length-prefixed messages (4-byte big-endian length, then a serialized
// SampleBatchRequest; the reply the same with a SampleBatchResponse) rather than gRPC: the Python side then
// reads a batch on a thread of its own, where a Python gRPC server would add ~3 ms of GIL-bound hand-offs
// to every batch (measured: that halved the batches at 32 clients).
type batcher struct {
	path     string
	slots    chan *link
	queue    chan *item
	maxBatch int
	timeout  time.Duration // a call that waited longer in the queue is refused (the Python batcher's queue_timeout)
	metrics  *metrics
}

// link is one connection to the batch socket (nil conn: not connected yet, or dropped after an error).
type link struct {
	conn net.Conn
	r    *bufio.Reader
}

func newBatcher(path string, maxBatch, inflight, maxQueue int, timeout time.Duration, m *metrics) *batcher {
	b := &batcher{path: path, slots: make(chan *link, inflight), queue: make(chan *item, maxQueue), maxBatch: maxBatch,
		timeout: timeout, metrics: m}
	for i := 0; i < inflight; i++ {
		b.slots <- &link{}
	}
	go b.run()
	return b
}

// submit queues `it`; false when the queue is full.
func (b *batcher) submit(it *item) bool {
	it.queued = time.Now()
	select {
	case b.queue <- it:
		return true
	default:
		return false
	}
}

func (b *batcher) run() {
	for {
		l := <-b.slots // wait for room in the backend first: calls pile up meanwhile
		batch := []*item{<-b.queue}
	fill:
		for len(batch) < b.maxBatch {
			select {
			case it := <-b.queue:
				batch = append(batch, it)
			default:
				break fill
			}
		}
		go func() {
			b.send(l, batch)
			b.slots <- l
		}()
	}
}

// send runs one batch and hands every item its answer.
func (b *batcher) send(l *link, batch []*item) {
	now := time.Now()
	live := make([]*item, 0, len(batch))
	req := &SampleBatchRequest{Items: make([]*BatchItem, 0, len(batch))} // gateway.pb.go, from protos/internal
	var latest time.Time
	bounded := true
	for _, it := range batch {
		if err := it.ctx.Err(); err != nil { // cancelled or past its deadline while queued: costs no run
			it.done <- reply{err: status.FromContextError(err).Err()}
			continue
		}
		if waited := now.Sub(it.queued); waited > b.timeout {
			it.done <- reply{err: status.Errorf(codes.ResourceExhausted, "waited %d ms in the gateway's queue, more "+
				"than the queue timeout of %d ms; retry with backoff", waited.Milliseconds(), b.timeout.Milliseconds())}
			continue
		}
		bi := &BatchItem{Method: it.method, Request: it.req}
		if d, ok := it.ctx.Deadline(); ok {
			bi.TimeoutUs = d.Sub(now).Microseconds()
			if bi.TimeoutUs < 1 {
				bi.TimeoutUs = 1
			}
			if d.After(latest) {
				latest = d
			}
		} else {
			bounded = false
		}
		req.Items = append(req.Items, bi)
		live = append(live, it)
	}
	if len(live) == 0 {
		return
	}
	if !bounded {
		latest = time.Time{} // no deadline on the socket
	}
	msg, err := protov2.MarshalOptions{}.MarshalAppend(make([]byte, 4, 4+64*len(live)), req) // 4 bytes: the length
	if err != nil {
		b.metrics.sent(len(live), true)
		for _, it := range live {
			it.done <- reply{err: status.Errorf(codes.Internal, "gateway: cannot encode a batch: %v", err)}
		}
		return
	}
	results, err := b.exchange(l, msg, len(live), latest)
	b.metrics.sent(len(live), err != nil)
	for i, it := range live {
		if err != nil {
			it.done <- reply{err: err}
		} else {
			it.done <- results[i]
		}
	}
}

// exchange writes one framed request of `items` items (msg starts with 4 free bytes for the length) and reads
// its framed reply. On any failure the connection is dropped (a reply may still be in flight on it) and the
// next batch redials.
func (b *batcher) exchange(l *link, msg []byte, items int, deadline time.Time) ([]reply, error) {
	fail := func(what string, err error) ([]reply, error) {
		if l.conn != nil {
			l.conn.Close()
			l.conn, l.r = nil, nil
		}
		code := codes.Unavailable
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			code = codes.DeadlineExceeded
		}
		return nil, status.Errorf(code, "gateway: %s the model server's batch socket: %v", what, err)
	}
	if len(msg)-4 > math.MaxUint32 {
		return nil, status.Errorf(codes.ResourceExhausted, "gateway: a batch of %d bytes is too large", len(msg))
	}
	if l.conn == nil {
		conn, err := net.Dial("unix", b.path)
		if err != nil {
			return fail("cannot reach", err)
		}
		if err := checkPeer(conn); err != nil {
			conn.Close()
			return fail("refused", err)
		}
		l.conn, l.r = conn, bufio.NewReaderSize(conn, 64<<10)
	}
	l.conn.SetDeadline(deadline)
	binary.BigEndian.PutUint32(msg, uint32(len(msg)-4))
	if _, err := l.conn.Write(msg); err != nil {
		return fail("cannot write to", err)
	}
	var head [4]byte
	if _, err := io.ReadFull(l.r, head[:]); err != nil {
		return fail("no reply from", err)
	}
	body := make([]byte, binary.BigEndian.Uint32(head[:]))
	if _, err := io.ReadFull(l.r, body); err != nil {
		return fail("short reply from", err)
	}
	results, err := parseResults(body, items)
	if err != nil {
		return fail("unreadable reply from", err)
	}
	return results, nil
}

// parseResults reads a SampleBatchResponse holding `n` BatchResults.
func parseResults(data []byte, n int) ([]reply, error) {
	resp := &SampleBatchResponse{}
	if err := protov2.Unmarshal(data, resp); err != nil {
		return nil, err
	}
	if len(resp.Results) != n {
		return nil, fmt.Errorf("%d results for %d items", len(resp.Results), n)
	}
	out := make([]reply, n)
	for i, r := range resp.Results {
		if len(r.Status) == 0 {
			out[i] = reply{data: r.Response}
			continue
		}
		s := &spb.Status{}
		if err := proto.Unmarshal(r.Status, s); err != nil {
			return nil, err
		}
		out[i] = reply{err: status.ErrorProto(s)}
	}
	return out, nil
}
