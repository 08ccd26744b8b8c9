//! kube-sim held to the real API server.
