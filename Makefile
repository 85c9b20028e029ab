# Thin wrappers around tasks.py, which needs only Python 3.11+.
.PHONY: setup dev test lint typecheck bench image lock
setup:     ; python3 tasks.py setup
dev:       ; python3 tasks.py dev
test:      ; python3 tasks.py test
lint:      ; python3 tasks.py lint
typecheck: ; python3 tasks.py typecheck
bench:     ; python3 tasks.py bench
image:     ; python3 tasks.py image
lock:      ; python3 tasks.py lock
