# The e2e scenarios' worker image: the worker runtime image plus e2e/handlers.py in /app, exactly the
# way docs/worker.md tells users to add their handler. Build context: this folder.
#   docker build -f e2e/worker.Dockerfile --build-arg WORKER_IMAGE=lagpilot-worker:e2e -t lagpilot-e2e-worker:e2e e2e
ARG WORKER_IMAGE=lagpilot-worker:0.1.0
FROM ${WORKER_IMAGE}
COPY --chown=10001:10001 handlers.py /app/handlers.py
CMD ["--handler=handlers:handle"]
