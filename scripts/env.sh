# Sourced by the demo and test scripts. Without credentials, every Beam process would spend about
# 20 s probing Google's metadata server; local runs need no credentials.
export NO_GCE_CHECK=true
export GCE_METADATA_HOST=127.0.0.1:9
export GCE_METADATA_IP=127.0.0.1:9
export TF_CPP_MIN_LOG_LEVEL=3
# gcsfs 2026.10's experimental bucket-type lookup makes a gRPC call on every open, which stalls
# ~30 s against a GCS emulator; plain JSON-API reads are what this project uses.
export GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false
