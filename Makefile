# Thin aliases for tasks.py (which needs only Python; use it directly where make is missing).
.PHONY: test book lab execute
test:
	python3 tasks.py test
book:
	python3 tasks.py book
lab:
	python3 tasks.py lab
execute:
	python3 tasks.py execute
