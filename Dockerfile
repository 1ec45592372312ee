# Portcullis, the SMTP gateway, as a container image.  Guide: docs/docker.md.
#
#   docker build -t portcullis .
#   docker run -d --name portcullis \
#     -p 25:2525 -p 587:2587 -p 465:2465 \
#     -v /srv/portcullis:/etc/portcullis:ro \
#     -v portcullis-state:/var/lib/portcullis \
#     portcullis
#
# BASE is an argument so the same file builds from a registry's debian:bookworm-slim
# and from a local base made with mmdebstrap (no registry: see docs/docker.md).
ARG BASE=debian:bookworm-slim

# --- build: a virtualenv holding portcullis and its dependencies -----------------
FROM ${BASE} AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/portcullis
# README.md* : the package metadata reads it when present.
COPY pyproject.toml README.md* /src/
COPY gateway /src/gateway
# `fast` brings uvloop.  Every compiled dependency ships manylinux wheels for
# CPython 3.11, so no compiler is needed here.  pip and setuptools are not needed
# at run time: leave them out of the image.
RUN /opt/portcullis/bin/pip install --no-cache-dir --disable-pip-version-check '/src[fast]' \
 && /opt/portcullis/bin/portcullis --help >/dev/null \
 && /opt/portcullis/bin/python -m pip uninstall -y -q pip setuptools

# --- runtime: Debian's python3, the virtualenv, an unprivileged user ------------
FROM ${BASE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 ca-certificates \
 && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/* \
 && groupadd --system --gid 10025 portcullis \
 && useradd --uid 10025 --gid portcullis --no-create-home \
      --home-dir /var/lib/portcullis --shell /usr/sbin/nologin portcullis \
 && mkdir -p /etc/portcullis/policy /etc/portcullis/tls /var/lib/portcullis/keys \
 && chown -R portcullis:portcullis /var/lib/portcullis \
 && chmod 0750 /var/lib/portcullis /var/lib/portcullis/keys
COPY --from=build /opt/portcullis /opt/portcullis

# No configuration, policy, key or secret is baked in: all of them are mounted.
#   /etc/portcullis/        read-only: gateway.yaml, policy/ (one file per customer),
#                           tls/ (certificate and key for 587/465), sender-id.key
#   /var/lib/portcullis/    writable by uid 10025: what the gateway writes (the SQLite
#                           store, keys/ the DKIM key store, Maildirs)
VOLUME ["/var/lib/portcullis"]
ENV PATH=/opt/portcullis/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /var/lib/portcullis
USER portcullis:portcullis

# Unprivileged ports inside the container; publish them as 25/587/465 on the host
# (-p 25:2525 -p 587:2587 -p 465:2465).
EXPOSE 2525 2587 2465

# An SMTP-level check (there is no HTTP probe in the image yet): connect to the
# first listener of the gateway file (inbound, submission, then submissions, the
# last one over TLS) and expect the 220 greeting.  A listener on 0.0.0.0 or :: is
# reached on loopback.  PORTCULLIS_CONFIG points elsewhere when CMD does.
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
  CMD ["/opt/portcullis/bin/python", "-c", "import os,socket,ssl,sys,yaml; L=yaml.safe_load(open(os.environ.get('PORTCULLIS_CONFIG','/etc/portcullis/gateway.yaml')))['listeners']; n=next(k for k in ('inbound','submission','submissions') if L.get(k)); a=str(L[n].get('address','127.0.0.1')); h={'0.0.0.0':'127.0.0.1','::':'::1','':'127.0.0.1'}.get(a,a); s=socket.create_connection((h,int(L[n]['port'])),timeout=8); s=ssl._create_unverified_context().wrap_socket(s) if n=='submissions' else s; g=s.recv(512); s.sendall(b'QUIT\\r\\n'); s.close(); print(n, h, L[n]['port'], g[:60]); sys.exit(0 if g.startswith(b'220') else 1)"]

CMD ["portcullis", "serve", "-c", "/etc/portcullis/gateway.yaml", "--workers", "auto"]
