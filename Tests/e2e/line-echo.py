#!/usr/bin/env python3
# A line echo for the labs: every address, port 7000, each line answered as "NAME:<line>" (NAME: argv[1]).
import socketserver, sys
name = sys.argv[1].encode()
class Echo(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(name + b":" + line)
            self.wfile.flush()
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer.daemon_threads = True
socketserver.ThreadingTCPServer.request_queue_size = 1024
socketserver.ThreadingTCPServer(("0.0.0.0", 7000), Echo).serve_forever()
