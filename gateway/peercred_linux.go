package main

import (
	"fmt"
	"net"
	"os"
	"syscall"
)

// checkPeer refuses a Unix-socket peer run by another user (SO_PEERCRED): a second check behind the private
// folder's 0700 mode, so the batch socket can only be the Python server this user started.
func checkPeer(conn net.Conn) error {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return nil
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return err
	}
	var cred *syscall.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return err
	}
	if credErr != nil {
		return credErr
	}
	if int(cred.Uid) != os.Getuid() {
		return fmt.Errorf("the socket's server runs as uid %d, not %d", cred.Uid, os.Getuid())
	}
	return nil
}
