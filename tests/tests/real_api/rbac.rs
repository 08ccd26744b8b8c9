//! RBAC as the real API server enforces it: the shipped Role is enough, and a Role missing a
//! verb the worker needs makes the worker say so clearly.
