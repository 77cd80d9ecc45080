// The C surface nfqlb uses: libmnl for the netlink socket, libnetfilter_queue's
// libmnl-based helpers for queue configuration, and the syscalls Swift cannot see.
// Netlink message layouts live in Swift (NetlinkLayout, checked against these headers by a unit test).
#ifndef NFQLB_CNFQUEUE_SHIM_H
#define NFQLB_CNFQUEUE_SHIM_H

#include <stdint.h>
// glibc first: linux/libc-compat.h then skips the uapi copies of in_addr & co (one definition for Swift).
#include <netinet/in.h>
#include <string.h>
#include <errno.h>
#include <unistd.h>
#include <signal.h>
#include <time.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <net/if.h>
#include <linux/if_tun.h>
#include <linux/netlink.h>
#include <libmnl/libmnl.h>
#include <libnetfilter_queue/libnetfilter_queue.h>
#include <linux/netfilter/nfnetlink_conntrack.h>
#include <linux/netfilter/nf_conntrack_tcp.h>

/// `struct mmsghdr` is visible only under _GNU_SOURCE; this has the same layout.
struct nfqlb_mmsghdr {
    struct msghdr msg_hdr;
    unsigned int msg_len;
};

/// recvmmsg(2) through syscall(2): the glibc prototype is _GNU_SOURCE-only.
static inline int nfqlb_recvmmsg(int fd, struct nfqlb_mmsghdr *vec, unsigned int vlen,
                                 int flags, struct timespec *timeout) {
    return (int)syscall(SYS_recvmmsg, fd, vec, vlen, flags, timeout);
}

/// sendmmsg(2) through syscall(2), for the same reason.
static inline int nfqlb_sendmmsg(int fd, struct nfqlb_mmsghdr *vec, unsigned int vlen, int flags) {
    return (int)syscall(SYS_sendmmsg, fd, vec, vlen, flags);
}

/// accept4(2) through syscall(2) (_GNU_SOURCE-only in glibc).
static inline int nfqlb_accept4(int fd, int flags) {
    return (int)syscall(SYS_accept4, fd, (void *)0, (void *)0, flags);
}

/// The uid of a Unix socket's peer, from SO_PEERCRED (struct ucred is _GNU_SOURCE-only; same layout).
/// 0 on success, -1 with errno set.
static inline int nfqlb_peer_uid(int fd, uint32_t *uid) {
    struct { int32_t pid; uint32_t uid; uint32_t gid; } credentials;
    socklen_t length = sizeof credentials;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &length) != 0) return -1;
    *uid = credentials.uid;
    return 0;
}

/// errno as a function: Swift cannot read the thread-local macro reliably from every module.
static inline int nfqlb_errno(void) { return errno; }

/// Function-like netlink macros, as constants Swift can read (the unit tests compare NetlinkLayout with them).
static const int NFQLB_NLMSG_HDRLEN = NLMSG_HDRLEN;
static const int NFQLB_NFGENMSG_LEN = NLMSG_ALIGN(sizeof(struct nfgenmsg));
static const int NFQLB_MSG_VERDICT_TYPE = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_VERDICT;
static const int NFQLB_MSG_PACKET_TYPE = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET;
static const uint32_t NFQLB_CFG_F_FAIL_OPEN = NFQA_CFG_F_FAIL_OPEN;
static const uint32_t NFQLB_CFG_F_GSO = NFQA_CFG_F_GSO;
// ctnetlink (ConntrackLayout is checked against these).
static const int NFQLB_CT_MSG_NEW_TYPE = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW;
static const int NFQLB_CT_MSG_DELETE_TYPE = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE;
static const int NFQLB_CT_MSG_GET_TYPE = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET;
static const int NFQLB_NLM_F_DUMP = NLM_F_DUMP;
static const int NFQLB_NLM_F_CREATE = NLM_F_CREATE;
static const int NFQLB_NLM_F_EXCL = NLM_F_EXCL;
static const int NFQLB_NLA_F_NESTED = NLA_F_NESTED;
static const int NFQLB_CT_TCP_FLAG_BE_LIBERAL = IP_CT_TCP_FLAG_BE_LIBERAL;

/// Creates the TUN device `name`, not persistent (the kernel removes it when its last descriptor closes, however
/// the process ends), and sets it up: the cluster's "nfqlb runs" signal for BIRD. The descriptor, or -1 with
/// errno (EBUSY: another process holds a device of that name).
static inline int nfqlb_tun_open_up(const char *name) {
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    if (fd < 0) return -1;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    int sock = -1, saved;
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) goto fail;
    sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (sock < 0 || ioctl(sock, SIOCGIFFLAGS, &ifr) < 0) goto fail;
    ifr.ifr_flags |= IFF_UP;
    if (ioctl(sock, SIOCSIFFLAGS, &ifr) < 0) goto fail;
    close(sock);
    return fd;
fail:
    saved = errno;
    if (sock >= 0) close(sock);
    close(fd);
    errno = saved;
    return -1;
}

#endif
