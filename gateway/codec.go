package main

// Messages cross the gateway as the bytes they arrived as: it never decodes a client's request or a
// backend's reply, so it stays correct whatever the .proto files add, and costs no protobuf work per call.

// frame is one gRPC message, serialized.
type frame struct{ data []byte }

// rawCodec hands frames through unchanged. Its name is "proto" so the content-type on the wire stays
// application/grpc(+proto), which is what the frames hold.
type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error) { return v.(*frame).data, nil }

func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	v.(*frame).data = data // grpc-go allocates a fresh buffer per received message
	return nil
}

func (rawCodec) Name() string   { return "proto" }
func (rawCodec) String() string { return "proto" }
