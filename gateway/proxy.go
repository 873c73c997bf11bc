package main

import (
	"context"
	"io"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// forward serves every method the gateway does not batch (ListModels, SampleStream, Interpolate, Invert,
// EvaluateDivergence, health, reflection, and anything a newer backend adds) by relaying the call to the
// backend: metadata and deadline go in, messages flow both ways as they come (streams stay streams, with
// HTTP/2 flow control end to end), and headers, trailers and the final status (with its details) come back.
func (g *gateway) forward(_ interface{}, in grpc.ServerStream) error {
	method, ok := grpc.MethodFromServerStream(in)
	if !ok {
		return status.Error(codes.Internal, "gateway: no method name on the stream")
	}
	err := g.authorize(in.Context(), method) // before any request is read
	if err == nil {
		err = g.relay(in, method)
	}
	g.metrics.call(method[strings.LastIndex(method, "/")+1:], status.Code(err), time.Time{}, false)
	return err
}

func (g *gateway) relay(in grpc.ServerStream, method string) error {
	md, _ := metadata.FromIncomingContext(in.Context())
	out := metadata.MD{}
	for k, v := range md {
		if !strings.HasPrefix(k, ":") { // pseudo-headers (:authority) belong to the hop, not the call
			out[k] = v
		}
	}
	// The incoming context carries the client's deadline and is cancelled when the client goes away.
	ctx, cancel := context.WithCancel(metadata.NewOutgoingContext(in.Context(), out))
	defer cancel()
	desc := &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}
	up, err := g.backend.NewStream(ctx, desc, method)
	if err != nil {
		return err
	}
	// A request over its limit ends the call with this status (the backend never sees it).
	refused := make(chan error, 1)
	go func() { // client -> backend
		for {
			f := &frame{}
			if err := in.RecvMsg(f); err != nil {
				if err == io.EOF {
					up.CloseSend()
				} else {
					cancel()
				}
				return
			}
			if err := g.limits.check(method, len(f.data)); err != nil {
				refused <- err
				cancel()
				return
			}
			if err := up.SendMsg(f); err != nil {
				return // the backend ended the call: its status comes out of RecvMsg below
			}
		}
	}()
	for first := true; ; first = false { // backend -> client
		f := &frame{}
		err := up.RecvMsg(f)
		if first {
			if h, herr := up.Header(); herr == nil && len(h) > 0 {
				in.SendHeader(h)
			}
		}
		if err == io.EOF {
			in.SetTrailer(trailer(up))
			return nil
		}
		if err != nil {
			select {
			case r := <-refused:
				return r
			default:
			}
			in.SetTrailer(trailer(up))
			return err // the backend's status, details included, is returned as is
		}
		if err := in.SendMsg(f); err != nil {
			return err
		}
	}
}

// trailer is the backend's trailing metadata without what grpc-go writes again from the returned status.
func trailer(up grpc.ClientStream) metadata.MD {
	t := up.Trailer().Copy()
	delete(t, "grpc-status-details-bin")
	return t
}
