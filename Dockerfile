FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY pyproject.toml README.md alembic.ini ./
COPY shared ./shared
COPY services ./services
COPY alembic ./alembic
RUN pip install --upgrade pip && pip install -e .

RUN useradd --create-home gateway && mkdir -p /app/var && chown gateway /app/var
USER gateway

EXPOSE 3000 9101 9102
CMD ["gateway", "run", "api"]
