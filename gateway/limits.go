package main

// Per-message limits, as the Python server applies them (server/limits.py): every request is at most
// -max-request-bytes, an EvaluateDivergence request (uploaded samples) at most -max-upload-bytes. grpc-go reads
// a message against one server-wide limit (the larger of the two, checked from the message's 5-byte header
// before the body is read); the smaller one is checked here, before a message is batched or relayed, with the
// same status and message the Python server gives. The backend counts repeated fields itself (it decodes).

import (
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const (
	service      = "ganserve.v1.GeneratorService"
	healthPrefix = "/grpc.health.v1.Health/"
	uploadMethod = "/" + service + "/EvaluateDivergence"
)

type requestLimits struct {
	request, upload int
}

// receive is grpc-go's limit: no message is read past it.
func (l requestLimits) receive() int {
	if l.upload > l.request {
		return l.upload
	}
	return l.request
}

// check is the Python server's RESOURCE_EXHAUSTED for a request of `size` bytes to `method`, or nil.
func (l requestLimits) check(method string, size int) error {
	limit, name, which := l.request, "max_request_bytes", "a request"
	if method == uploadMethod {
		limit, name, which = l.upload, "max_upload_bytes", "an EvaluateDivergence request"
	}
	if size > limit {
		return status.Errorf(codes.ResourceExhausted, "%s of %d bytes is over the server's limit of %d bytes (%s)",
			which, size, limit, name)
	}
	return nil
}
