"""Test-only HTTPS CONNECT proxy in front of a local fake-gcs-server.

TensorFlow's GCS filesystem (used by tf.io.gfile, tf.summary and etils.epath
when TF is installed) has its endpoints hard-coded to https://www.googleapis.com
and https://storage.googleapis.com, but honours https_proxy and CURL_CA_BUNDLE.
This proxy answers CONNECT, terminates TLS with a test certificate for those
hosts, and forwards plain HTTP/1.1 to fake-gcs-server's HTTP port, fixing two
things Go's HTTP server dislikes/needs:
  * drops `Transfer-Encoding: identity` (Go answers 501),
  * adds `X-Forwarded-Proto: https` so upload-session Locations are https://,
  * maps GET b/<bucket>/storageLayout (unimplemented there) to GET b/<bucket>.
Usage: python gcs_mitm_proxy.py LISTEN_PORT UPSTREAM_HTTP_PORT CERT KEY
"""
import os, re, socket, ssl, sys, threading

DEBUG = bool(os.environ.get("GCS_PROXY_DEBUG"))


class Reader:
    def __init__(self, sock):
        self.sock, self.buf = sock, b""

    def _fill(self):
        d = self.sock.recv(1 << 20)
        if not d:
            raise EOFError
        self.buf += d

    def until(self, sep):
        while sep not in self.buf:
            self._fill()
        i = self.buf.index(sep) + len(sep)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def exactly(self, n):
        while n > 0:
            if not self.buf:
                self._fill()
            out, self.buf = self.buf[:n], self.buf[n:]
            n -= len(out)
            yield out


def close(*socks):
    for s in socks:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def pump_responses(up, client):
    try:
        while d := up.recv(1 << 20):
            client.sendall(d)
    except OSError:
        pass
    finally:
        close(up, client)


def pump_requests(r, up):
    try:
        while True:
            head = r.until(b"\r\n\r\n")[:-4]
            lines = head.split(b"\r\n")
            # TF's rename asks for the bucket's storageLayout (HNS check), which
            # fake-gcs-server lacks: answer with the bucket's metadata instead
            # (no `hierarchicalNamespace` key -> TF treats it as a flat bucket).
            lines[0] = re.sub(rb"^(GET /storage/v1/b/[^/?]+)/storageLayout", rb"\1", lines[0])
            out, length, chunked = [lines[0], b"X-Forwarded-Proto: https"], 0, False
            for line in lines[1:]:
                k, _, v = line.partition(b":")
                k, v = k.strip().lower(), v.strip().lower()
                if k == b"x-forwarded-proto" or (k == b"transfer-encoding" and v == b"identity"):
                    continue
                if k == b"transfer-encoding" and v == b"chunked":
                    chunked = True
                if k == b"content-length":
                    length = int(v)
                out.append(line)
            if DEBUG:
                sys.stderr.write(repr(b"\r\n".join(out)) + "\n")
            up.sendall(b"\r\n".join(out) + b"\r\n\r\n")
            if chunked:
                while True:
                    size_line = r.until(b"\r\n")
                    up.sendall(size_line)
                    size = int(size_line.split(b";")[0].strip(), 16)
                    if size == 0:
                        while (t := r.until(b"\r\n")) != b"\r\n":  # trailers
                            up.sendall(t)
                        up.sendall(b"\r\n")
                        break
                    for part in r.exactly(size + 2):  # data + CRLF
                        up.sendall(part)
            else:
                for part in r.exactly(length):
                    up.sendall(part)
    except (OSError, EOFError, ValueError):
        pass
    finally:
        close(r.sock, up)


def handle(c, ctx, upstream):
    try:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        r = Reader(c)
        if not r.until(b"\r\n\r\n").startswith(b"CONNECT "):
            c.close()
            return
        c.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        t = ctx.wrap_socket(c, server_side=True)
        u = socket.create_connection(upstream)
        u.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=pump_responses, args=(u, t), daemon=True).start()
        pump_requests(Reader(t), u)
    except (OSError, EOFError):
        c.close()


def main():
    listen, up_port, cert, key = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", listen))
    s.listen(128)
    print(s.getsockname()[1], flush=True)
    while True:
        c, _ = s.accept()
        threading.Thread(target=handle, args=(c, ctx, ("127.0.0.1", up_port)), daemon=True).start()


if __name__ == "__main__":
    main()
