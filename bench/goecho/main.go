// ganserve-goecho: the bare native gRPC floor for the benchmark (bench/goecho.py builds and starts it).
//
// grpc-go answering Sample and SampleConditional for n = 1 with a prebuilt reply of the model's size: no
// model, no validation, no latents, nothing else. What it serves is meaningless; how fast it answers is
// the least any server in front of a model can cost on this machine under the same load generator, so the
// benchmark can say how much of ganserve's n = 1 latency is the network path and how much is the model.
// It is the native counterpart of bench/echo.py (the bare Python gRPC server).
package main

import (
	"encoding/binary"
	"flag"
	"fmt"
	"log"
	"net"
	"os"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
)

// frame is one serialized gRPC message; rawCodec hands frames through untouched (as the gateway does).
type frame struct{ data []byte }

type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error) {
	if f, ok := v.(*frame); ok {
		return f.data, nil
	}
	return nil, fmt.Errorf("goecho: cannot marshal %T", v)
}

func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	if f, ok := v.(*frame); ok {
		f.data = data
		return nil
	}
	return fmt.Errorf("goecho: cannot unmarshal into %T", v)
}

func (rawCodec) Name() string { return "proto" }

// readReplies reads the file bench/goecho.py writes: records of (uint32 name length, name, uint32 reply
// length, serialized SampleResponse for n = 1), big-endian lengths.
func readReplies(path string) (map[string][]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := map[string][]byte{}
	field := func() ([]byte, error) {
		if len(data) < 4 || uint64(len(data)-4) < uint64(binary.BigEndian.Uint32(data)) {
			return nil, fmt.Errorf("%s: truncated record", path)
		}
		n := binary.BigEndian.Uint32(data)
		b := data[4 : 4+n]
		data = data[4+n:]
		return b, nil
	}
	for len(data) > 0 {
		name, err := field()
		if err != nil {
			return nil, err
		}
		reply, err := field()
		if err != nil {
			return nil, err
		}
		out[string(name)] = reply
	}
	return out, nil
}

// modelAndN reads fields 1 (model) and 2 (n) of a SampleRequest / SampleConditionalRequest.
func modelAndN(b []byte) (string, uint64, error) {
	var model string
	var n uint64
	for len(b) > 0 {
		num, typ, k := protowire.ConsumeTag(b)
		if k < 0 {
			return "", 0, protowire.ParseError(k)
		}
		b = b[k:]
		switch {
		case num == 1 && typ == protowire.BytesType:
			v, k := protowire.ConsumeBytes(b)
			if k < 0 {
				return "", 0, protowire.ParseError(k)
			}
			model, b = string(v), b[k:]
		case num == 2 && typ == protowire.VarintType:
			v, k := protowire.ConsumeVarint(b)
			if k < 0 {
				return "", 0, protowire.ParseError(k)
			}
			n, b = v, b[k:]
		default:
			k := protowire.ConsumeFieldValue(num, typ, b)
			if k < 0 {
				return "", 0, protowire.ParseError(k)
			}
			b = b[k:]
		}
	}
	return model, n, nil
}

func main() {
	listen := flag.String("listen", "127.0.0.1:50098", "address, host:port")
	repliesPath := flag.String("replies", "", "the replies file bench/goecho.py writes (required)")
	remove := flag.Bool("remove-replies", false, "delete the replies file once read (a temporary file)")
	flag.Parse()
	replies, err := readReplies(*repliesPath)
	if *remove {
		os.Remove(*repliesPath)
	}
	if err != nil {
		log.Fatal(err)
	}
	encoding.RegisterCodec(rawCodec{})
	answer := func(_ interface{}, st grpc.ServerStream) error {
		method, _ := grpc.MethodFromServerStream(st)
		if method == "/grpc.health.v1.Health/Check" { // the bench's readiness probe: always SERVING
			if err := st.RecvMsg(&frame{}); err != nil {
				return err
			}
			return st.SendMsg(&frame{data: []byte{0x08, 0x01}}) // HealthCheckResponse{status: SERVING}
		}
		if method != "/ganserve.v1.GeneratorService/Sample" && method != "/ganserve.v1.GeneratorService/SampleConditional" {
			return status.Errorf(codes.Unimplemented, "goecho serves Sample and SampleConditional only, not %s", method)
		}
		req := &frame{}
		if err := st.RecvMsg(req); err != nil {
			return err
		}
		model, n, err := modelAndN(req.data)
		if err != nil {
			return status.Errorf(codes.InvalidArgument, "request: %v", err)
		}
		if n > 1 {
			return status.Errorf(codes.Unimplemented, "goecho answers n = 1 only, got n = %d", n)
		}
		reply, ok := replies[model]
		if !ok {
			return status.Errorf(codes.NotFound, "model: no model %q", model)
		}
		return st.SendMsg(&frame{data: reply})
	}
	server := grpc.NewServer(grpc.UnknownServiceHandler(answer))
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	log.Fatal(server.Serve(lis))
}
