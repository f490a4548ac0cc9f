from twisted.application.service import ServiceMaker

sixchat = ServiceMaker("SixChat agent", "sixchat.tap", "SixChat End2End Direct user agent (TCP 4605)", "sixchat")
