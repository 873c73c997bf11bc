"""SDK defaults, in one place. Precedence for the target: argument > $GANSERVE_TARGET > DEFAULT_TARGET."""

DEFAULT_TARGET = "localhost:50051"
ENV_TARGET = "GANSERVE_TARGET"
ENV_TOKEN = "GANSERVE_TOKEN"          # bearer token, when the server requires one
DEFAULT_TIMEOUT_S = 60.0               # per call, including retries
DEFAULT_RETRIES = 3                    # extra attempts on UNAVAILABLE / RESOURCE_EXHAUSTED
BACKOFF_INITIAL_S = 0.05               # first retry waits up to this (full jitter), doubling each time
BACKOFF_MAX_S = 2.0
MIN_ATTEMPT_S = 0.02                   # no retry with less of the deadline left than this
MAX_MESSAGE_BYTES = 64 << 20           # matches the server's default limit
REFERENCES = ("mnist-test", "mnist-train", "mnist-valid", "ring8", "grid25")
MAX_SAMPLES = 1024                     # the server's default max_samples: sample() streams above it
STREAM_S_PER_SAMPLE = 0.002            # a streamed sample()'s default deadline grows by this per sample
