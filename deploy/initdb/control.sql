-- The control store of cluster mode: the replicas create its tables themselves.
CREATE DATABASE orchestrator_control;
