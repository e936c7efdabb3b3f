/* fuzz_family.c - the service message families (see fuzz_family.h). */
#include "fuzz_family.h"

#include <string.h>

#include "audit.pb-c.h"
#include "card.pb-c.h"
#include "ledger.pb-c.h"
#include "replica.pb-c.h"
#include "signer.pb-c.h"

static const fuzz_family_t FAMILIES[] = {
    {"ledger",
     {&qcledger__account__descriptor,
      &qcledger__device__descriptor,
      &qcledger__load__descriptor,
      &qcledger__transfer__descriptor,
      &qcledger__outbox_event__descriptor,
      &qcledger__reserve_request__descriptor,
      &qcledger__reserve_reply__descriptor,
      &qcledger__settle_request__descriptor,
      &qcledger__get_load_request__descriptor,
      &qcledger__load_reply__descriptor,
      &qcledger__get_account_request__descriptor,
      &qcledger__open_account_request__descriptor,
      &qcledger__deposit_request__descriptor,
      &qcledger__freeze_request__descriptor,
      &qcledger__account_reply__descriptor,
      &qcledger__get_device_request__descriptor,
      &qcledger__enroll_device_request__descriptor,
      &qcledger__revoke_device_request__descriptor,
      &qcledger__device_reply__descriptor,
      &qcledger__check_request__descriptor,
      &qcledger__currency_totals__descriptor,
      &qcledger__check_reply__descriptor,
      &qcledger__outbox_read_request__descriptor,
      &qcledger__outbox_read_reply__descriptor,
      &qcledger__outbox_ack_request__descriptor,
      &qcledger__outbox_ack_reply__descriptor,
      &qcreplica__entry__descriptor,
      &qcreplica__op__descriptor,
      &qcreplica__reserve__descriptor,
      &qcreplica__settle__descriptor,
      &qcreplica__expire__descriptor,
      &qcreplica__bad_report__descriptor,
      &qcreplica__set_frozen__descriptor},
     33},
    {"signer", {&quancun__sign_request__descriptor, &quancun__sign_reply__descriptor}, 2},
    {"audit", {&qcaudit__append_request__descriptor, &qcaudit__append_reply__descriptor}, 2},
    {"card",
     {&qccard__card_request__descriptor, &qccard__card_response__descriptor,
      &qccard__card_challenge__descriptor, &qccard__card_credit__descriptor,
      &qccard__card_receipt__descriptor, &qccard__card_transfer_record__descriptor,
      &qccard__card_state__descriptor},
     7},
};

const fuzz_family_t *fuzz_family(const char *name)
{
    for (size_t i = 0; i < sizeof(FAMILIES) / sizeof(FAMILIES[0]); i++)
        if (strcmp(FAMILIES[i].name, name) == 0)
            return &FAMILIES[i];
    return NULL;
}

const fuzz_family_t *fuzz_families(size_t *count)
{
    *count = sizeof(FAMILIES) / sizeof(FAMILIES[0]);
    return FAMILIES;
}
