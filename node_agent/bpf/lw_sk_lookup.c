/* Lacewing: sk_lookup in the node's network namespace — the TIME_WAIT hand-over.
 *
 * Before: a tc capture program (lw_capture.h: lw_capture_syn) met a SYN whose own tuple is
 * held by a TIME_WAIT socket of the node (the tunnel's side of an earlier connection), marked
 * it and recorded its tuple in lw_tw with the listener it belongs to. The kernel found the
 * TIME_WAIT socket, accepted the SYN as a new connection (TCP_TW_SYN) and now looks for a
 * listener for the original destination (pod address and port) — which runs this program,
 * attached to the node namespace with a BPF link (the agent pins the link).
 * After: for a recorded tuple, the lookup yields the tunnel's registered listener (lw_listeners)
 * and the record is consumed; the kernel kills the TIME_WAIT socket and the listener accepts,
 * its accepted socket's local address being the original destination, as with capture.
 * A recorded tuple whose listener is not registered is refused (no other listener of the node
 * may take a pod's connection). Every other lookup — this runs for every listener lookup in
 * the node namespace — passes untouched after one hash lookup.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/in.h>
#include <linux/socket.h>

#include "lw_maps.h"

int lw_sk_lookup(struct bpf_sk_lookup *ctx)
{
    if (ctx->family != AF_INET || ctx->protocol != IPPROTO_TCP)
        return SK_PASS;
    struct lw_capt_key k = {};
    k.saddr = ctx->remote_ip4;
    k.daddr = ctx->local_ip4;
    k.sport = ctx->remote_port;                 /* network order */
    k.dport = bpf_htons(ctx->local_port);       /* host order in the context */
    __u32 *slot = lw_tw.lookup(&k);
    if (!slot)
        return SK_PASS;
    __u32 which = *slot;
    lw_tw.delete(&k);
    struct bpf_sock *sk = (struct bpf_sock *)lw_listeners.lookup(&which);
    if (!sk) {
        lw_count(LW_ST_SKL_REFUSED);
        return SK_DROP;
    }
    long err = bpf_sk_assign(ctx, sk, 0);
    bpf_sk_release(sk);
    if (err) {
        lw_count(LW_ST_SKL_REFUSED);
        return SK_DROP;
    }
    lw_count(LW_ST_SKL_ASSIGNED);
    return SK_PASS;
}
