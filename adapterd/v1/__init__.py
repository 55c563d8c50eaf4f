"""adapterd.v1: code generated from protos/adapterd/v1/*.proto by scripts/gen_protos.sh."""
