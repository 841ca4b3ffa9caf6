"""The messaging service: triggered e-mails, push notifications and retargeting audiences."""
